"""Configurations of Vision-RWKV: VRWKV (bidirectional RWKV-4 WKV, model type
``rwkv_hf_vrwkv``) and VRWKV6 (bidirectional RWKV-6 WKV, ``rwkv_hf_vrwkv6``).

The fields follow the official backbones (OpenGVLab/Vision-RWKV, ``VRWKV`` / ``VRWKV6``),
with transformers' names where one exists: ``embed_dims`` is ``hidden_size``, ``depth``
``num_hidden_layers``, ``init_values`` ``layer_scale_init_value``, ``hidden_rate``
``intermediate_size / hidden_size``. ``VRWKV_SIZES`` / ``VRWKV6_SIZES`` hold the published
T/S/B/L settings.
"""
from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin


class _VrwkvConfigBase(BackboneConfigMixin, PreTrainedConfig):
    """Fields shared by VRWKV and VRWKV6.

    Args:
        image_size: the pretraining resolution (int or (height, width)); it fixes the
            position-embedding grid, which is resized bicubically for other inputs.
        patch_size: side of the square patches (and stride of the patch convolution).
        num_channels: input image channels.
        hidden_size: width C of the token features.
        num_hidden_layers: number of blocks.
        intermediate_size: channel-mix hidden width (4 * hidden_size when None).
        shift_pixel: distance of the quad-directional token shift (Q-Shift), in patches.
        post_norm: the "extra normalisation" blocks: ``x + ln(attn(x))`` instead of
            ``x + attn(ln(x))`` (the published S, B and L models).
        key_norm: LayerNorm on the WKV output and on the squared-ReLU keys (VRWKV-L).
        layer_scale_init_value: initial value of the per-channel layer scale
            ``gamma1/gamma2``; None: no layer scale.
        final_norm: LayerNorm ``ln1`` after the last block.
        classifier_hidden_size: when set, the classification head is
            Linear(C, this) -> Tanh -> Linear(this, num_labels) (VRWKV-L: 3072); otherwise
            a single Linear.
        drop_path_rate: stochastic-depth rate of the last block (linear from 0).
        hidden_dropout_prob: dropout after the position embedding.
        layer_norm_eps: epsilon of every LayerNorm.
        initializer_range: std of the truncated-normal init of linear layers.
        out_features / out_indices: stages returned by the backbone (``stem``, ``stage1``
            ... ``stageL``; the last block's output is final-normed, as the official code).
    """

    image_size: int | list[int] | tuple[int, int] = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 192
    num_hidden_layers: int = 12
    intermediate_size: int | None = None
    shift_pixel: int = 1
    post_norm: bool = False
    key_norm: bool = False
    layer_scale_init_value: float | None = None
    final_norm: bool = True
    classifier_hidden_size: int | None = None
    drop_path_rate: float = 0.0
    hidden_dropout_prob: float = 0.0
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        for name in ("patch_size", "num_channels", "hidden_size", "num_hidden_layers", "shift_pixel"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive integer, got {value!r}")
        size = self.image_size
        if isinstance(size, int):
            size = (size, size)
        if len(size) != 2 or any(not isinstance(s, int) or s < self.patch_size for s in size):
            raise ValueError(f"{type(self).__name__}: image_size must be an int or (height, width), each at "
                             f"least patch_size={self.patch_size}, got {self.image_size!r}")
        self.image_size = size[0] if size[0] == size[1] else list(size)
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, self.num_hidden_layers + 1)]
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None))
        super().__post_init__(**kwargs)

    @property
    def image_hw(self):
        """The pretraining resolution as (height, width)."""
        size = self.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def patch_grid(self):
        """The position-embedding grid (rows, columns) of the pretraining resolution
        (partial patches are padded, as mmcv's PatchEmbed)."""
        return tuple(-(-s // self.patch_size) for s in self.image_hw)


class VrwkvConfig(_VrwkvConfigBase):
    """Vision-RWKV with the bidirectional RWKV-4 WKV (``VRWKV``).

    Args:
        channel_gamma: fraction of the channels shifted in each of the four directions
            (the rest are not shifted).
    """

    model_type = "rwkv_hf_vrwkv"
    channel_gamma: float = 0.25

    def __post_init__(self, **kwargs):
        if not 0 < self.channel_gamma <= 0.25:
            raise ValueError(f"VrwkvConfig: channel_gamma must be in (0, 1/4], got {self.channel_gamma!r}")
        super().__post_init__(**kwargs)


class Vrwkv6Config(_VrwkvConfigBase):
    """Vision-RWKV with the bidirectional RWKV-6 WKV (``VRWKV6``): data-dependent token
    mixing and decay, heads of ``head_size`` channels.

    Args:
        head_size: channels per WKV head (64 in every official model); the Q-Shift also
            works per head.
        time_mix_extra_dim: rank of the data-dependent mixing (``time_maa_w1/w2``).
        time_decay_extra_dim: rank of the data-dependent decay (``time_decay_w1/w2``).
        group_norm_eps: epsilon of the per-head GroupNorm ``ln_x``.
    """

    model_type = "rwkv_hf_vrwkv6"
    head_size: int = 64
    time_mix_extra_dim: int = 32
    time_decay_extra_dim: int = 64
    group_norm_eps: float = 1e-5

    def __post_init__(self, **kwargs):
        if not isinstance(self.head_size, int) or self.head_size < 4 or self.head_size % 4 \
                or self.hidden_size % self.head_size:
            raise ValueError(f"Vrwkv6Config: head_size must be a multiple of 4 dividing hidden_size="
                             f"{self.hidden_size}, got {self.head_size!r}")
        super().__post_init__(**kwargs)

    @property
    def num_heads(self):
        return self.hidden_size // self.head_size


# The published models (Vision-RWKV README and configs). Drop-path rates used for training:
# T 0, S 0.3, B 0.5, L 0.1 (pass drop_path_rate when fine-tuning).
VRWKV_SIZES = {
    "tiny": dict(hidden_size=192),
    "small": dict(hidden_size=384, post_norm=True, layer_scale_init_value=1.0),
    "base": dict(hidden_size=768, post_norm=True, layer_scale_init_value=1e-5),
    "large": dict(hidden_size=1024, num_hidden_layers=24, post_norm=True, layer_scale_init_value=1e-5,
                  key_norm=True, classifier_hidden_size=3072, image_size=384),
}
VRWKV6_SIZES = {
    "tiny": dict(hidden_size=192),
    "small": dict(hidden_size=384, post_norm=True, layer_scale_init_value=1e-5),
    "base": dict(hidden_size=768, post_norm=True, layer_scale_init_value=1e-5),
}
