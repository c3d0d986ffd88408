"""Configurations of RWKV-CLIP (deepglint/RWKV-CLIP, arXiv 2406.06973): the text tower
(model type ``rwkv_hf_rwkv_clip_text``) and the two-tower model (``rwkv_hf_rwkv_clip``).

The image tower is a VRWKV6 (:class:`~rwkv_hf.vision.Vrwkv6Config`); the official one is a
copy of Vision-RWKV's ``VRWKV6`` with 8 heads of 80 channels. The text tower is a
bidirectional RWKV-6 over the open_clip BPE tokens (``model/Text_rwkv.py``): the fields are the
official ``args`` with transformers' names (``n_embd`` is ``hidden_size``, ``n_layer``
``num_hidden_layers``, ``dim_ffn`` ``intermediate_size``, ``ctx_len`` ``context_length``).
"""
import math

from transformers import PreTrainedConfig

from ..vision.configuration_vrwkv import Vrwkv6Config


class RwkvClipTextConfig(PreTrainedConfig):
    """The RWKV-CLIP text tower: token embedding, RWKV-6 blocks whose token shift and WKV
    are bidirectional, a final LayerNorm; the text embedding is the mean over all
    ``context_length`` positions of the L2-normalised token features.

    Args:
        vocab_size: tokens of the open_clip BPE vocabulary (49408).
        hidden_size: width C (``n_embd`` = ``dim_att``).
        num_hidden_layers: blocks.
        intermediate_size: channel-mix hidden width (``dim_ffn``).
        head_size: channels per WKV head; the token shift also works per head (the first
            half of each head's channels comes from the previous token, the second half from
            the next).
        time_mix_extra_dim / time_decay_extra_dim: ranks of the data-dependent mixing and decay.
        context_length: tokens the tower reads (the official 77): shorter inputs are padded
            with ``pad_token_id`` to it, as the official tokenizer does, because every position
            (padding included) enters the bidirectional recurrence and the mean.
        pad_token_id: the padding token (0, open_clip's padding).
        layer_norm_eps: epsilon of the LayerNorms.
        group_norm_eps: epsilon of the per-head GroupNorm ``ln_x`` (the official
            ``1e-5 * head_size_divisor**2`` with ``head_size_divisor`` 8).
        hidden_dropout_prob: dropout of the residual stream after each block half (the
            official ``drop0`` / ``drop1``; 0 in the published models).
    """

    model_type = "rwkv_hf_rwkv_clip_text"
    base_config_key = "text_config"

    vocab_size: int = 49408
    hidden_size: int = 640
    num_hidden_layers: int = 6
    intermediate_size: int = 2240
    head_size: int = 64
    time_mix_extra_dim: int = 32
    time_decay_extra_dim: int = 64
    context_length: int = 77
    pad_token_id: int | None = 0
    layer_norm_eps: float = 1e-5
    group_norm_eps: float = 1e-5 * 8 ** 2
    hidden_dropout_prob: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "head_size",
                     "time_mix_extra_dim", "time_decay_extra_dim", "context_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RwkvClipTextConfig: {name} must be a positive integer, got {value!r}")
        if self.head_size % 2 or self.hidden_size % self.head_size:
            raise ValueError(f"RwkvClipTextConfig: head_size must be even and divide hidden_size="
                             f"{self.hidden_size}, got {self.head_size}")
        if self.pad_token_id is None or not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"RwkvClipTextConfig: pad_token_id must be a token id (the tower pads every input "
                             f"to context_length with it), got {self.pad_token_id!r}")
        super().__post_init__(**kwargs)

    @property
    def num_heads(self):
        return self.hidden_size // self.head_size


class RwkvClipConfig(PreTrainedConfig):
    """RWKV-CLIP: a VRWKV6 image tower and an RWKV-6 text tower trained contrastively. There
    is no projection head: the image embedding is the mean of the image tower's final-normed
    tokens (``hidden_size`` wide), the text embedding the text tower's pooled output; both
    towers must have the same width.

    Args:
        text_config: a :class:`RwkvClipTextConfig` or its dict.
        vision_config: a :class:`~rwkv_hf.vision.Vrwkv6Config` or its dict.
        logit_scale_init_value: initial log of the contrastive temperature's inverse
            (ln(1/0.07), as CLIP; the official training clamps it to [0, ln 100]).
    """

    model_type = "rwkv_hf_rwkv_clip"
    sub_configs_defaults = {"text_config": RwkvClipTextConfig, "vision_config": Vrwkv6Config}

    text_config: dict | RwkvClipTextConfig | None = None
    vision_config: dict | Vrwkv6Config | None = None
    logit_scale_init_value: float = math.log(1 / 0.07)
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.text_config.hidden_size != self.vision_config.hidden_size:
            raise ValueError(f"RwkvClipConfig: the towers must be equally wide (no projection head): text "
                             f"hidden_size {self.text_config.hidden_size}, vision {self.vision_config.hidden_size}")

    @property
    def projection_dim(self):
        """Width of the shared embedding space (both towers' ``hidden_size``)."""
        return self.text_config.hidden_size


# The published models (model_config/RWKV_CLIP_B32.json / _B16.json): the image tower is
# 224 px, 12 blocks of 640 channels (8 heads of 80), channel-mix 5 x 640 wide.
_VISION = dict(image_size=224, hidden_size=640, num_hidden_layers=12, intermediate_size=3200, head_size=80)
_TEXT = dict(vocab_size=49408, hidden_size=640, num_hidden_layers=6, intermediate_size=2240, head_size=64)
RWKV_CLIP_SIZES = {
    "B/32": dict(vision_config=dict(_VISION, patch_size=32), text_config=dict(_TEXT)),
    "B/16": dict(vision_config=dict(_VISION, patch_size=16), text_config=dict(_TEXT)),
}
