"""RWKV-CLIP (deepglint/RWKV-CLIP, arXiv 2406.06973) as transformers models.

Two towers with the official module and parameter names, so that the model's state dict has
the key layout of the released checkpoints (``image_model.*``, ``text_model.*``,
``logit_scale``):

* ``image_model``: a VRWKV6 (:class:`~rwkv_hf.vision.Vrwkv6Model`); the image embedding is the
  mean of its final-normed tokens (official ``GlobalAveragePooling``).
* ``text_model``: :class:`RwkvClipTextModel` (official ``Text_RWKV``): token embedding
  ``emb``, RWKV-6 ``blocks`` (block 0 first applies ``ln0``; ``x + att(ln1(x))``,
  ``x + ffn(ln2(x))``), ``ln_out``. Both token shifts are bidirectional (in every head, the
  first half of the channels comes from the previous token, the second half from the next)
  and the WKV is ``ops.bi_wkv6``, the same operator as the image tower's. The text embedding
  is the mean, over all ``context_length`` positions, padding included, of the L2-normalised
  token features.

There is no projection head: both embeddings are ``hidden_size`` wide. ``RwkvClipModel``
returns transformers' :class:`~transformers.models.clip.modeling_clip.CLIPOutput`
(``logits_per_image`` = exp(``logit_scale``) x cosine similarities), so the
``zero-shot-image-classification`` pipeline works as with CLIP.
"""
import importlib
import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPOutput

from ..hub_mixin import RwkvHubMixin
from ..modeling_utils import layer_ratios, ramp, sqrelu
from ..vision.modeling_vrwkv import Vrwkv6Model, Vrwkv6SpatialMix
from .configuration_rwkv_clip import RwkvClipConfig, RwkvClipTextConfig

# The package's fused CPU blocks (VRWKV6's C block); remote-code copies of this file run the eager
# form (imported by name so that transformers' remote-code import scan does not look for it).
cpu_fused = (importlib.import_module("rwkv_hf.vision.cpu_fused")
             if __name__ == "rwkv_hf.clip.modeling_rwkv_clip" else None)


def bidirectional_shift(x, group):
    """The text tower's token shift of ``x`` [B, T, C]: in each group of ``group`` channels (a
    head), the first half comes from token t-1 and the second half from token t+1; zeros
    past either end (official ``bidirectional_shift_multihead``)."""
    b, t, c = x.shape
    x = x.view(b, t, c // group, group)
    half = group // 2
    from_left = F.pad(x[:, :-1, :, :half], (0, 0, 0, 0, 1, 0))
    from_right = F.pad(x[:, 1:, :, half:], (0, 0, 0, 0, 0, 1))
    return torch.cat([from_left, from_right], -1).view(b, t, c)


def _linear(c_in, c_out):
    return nn.Linear(c_in, c_out, bias=False)


def contrastive_loss(logits_per_image):
    """The symmetric InfoNCE loss of CLIP training (official ``ClipLoss``): image i and text i
    are the matching pair; the mean of the cross-entropies over texts and over images."""
    if logits_per_image.shape[0] != logits_per_image.shape[1]:
        raise ValueError(f"the contrastive loss pairs image i with text i: got {logits_per_image.shape[0]} images "
                         f"and {logits_per_image.shape[1]} texts")
    labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.t(), labels)) / 2


class RwkvClipTextTimeMix(Vrwkv6SpatialMix):
    """The text tower's token mixing: VRWKV6's (data-dependent lerp, per-token decay,
    ``W_o(GroupNorm(BiWKV6(r, k, v)) * silu(W_g x))``) with the bidirectional 1-D shift."""

    def token_shift(self, x, grid):
        return bidirectional_shift(x, self.head_size)

    def init_weights(self):
        # The official text initialisation: as VRWKV6's, but zero / +-0.01 low-rank mixing and
        # decay factors and a GroupNorm scale growing with depth.
        super().init_weights()
        init.zeros_(self.time_maa_w1)
        init.uniform_(self.time_maa_w2, -0.01, 0.01)
        init.zeros_(self.time_decay_w1)
        init.uniform_(self.time_decay_w2, -0.01, 0.01)
        init.constant_(self.ln_x.weight, ((1 + self.layer_id) / self.num_layers) ** 0.7)
        for name, scale in (("receptance", 1.0), ("key", 0.1), ("value", 1.0), ("gate", 0.1), ("output", 0.0)):
            _orthogonal(getattr(self, name), scale)


class RwkvClipTextChannelMix(nn.Module):
    """``sigmoid(W_r x_r) * W_v relu(W_k x_k)^2`` with ``x_* = x + (shift(x) - x) * time_maa_*``."""

    def __init__(self, config, layer_id):
        super().__init__()
        c, f = config.hidden_size, config.intermediate_size
        self.layer_id, self.num_layers, self.group = layer_id, config.num_hidden_layers, config.head_size
        self.time_maa_k = nn.Parameter(torch.empty(1, 1, c))
        self.time_maa_r = nn.Parameter(torch.empty(1, 1, c))
        self.key = _linear(c, f)
        self.receptance = _linear(c, c)
        self.value = _linear(f, c)

    def init_weights(self):
        c = self.time_maa_k.numel()
        curve = 1 - ramp(c).view(1, 1, c) ** layer_ratios(self.layer_id, self.num_layers)[1]
        init.copy_(self.time_maa_k, curve)
        init.copy_(self.time_maa_r, curve)
        for name, scale in (("key", 0.5), ("receptance", 0.0), ("value", 0.0)):
            _orthogonal(getattr(self, name), scale)

    def forward(self, x):
        xx = bidirectional_shift(x, self.group) - x
        k = sqrelu(self.key(x + xx * self.time_maa_k))
        return torch.sigmoid(self.receptance(x + xx * self.time_maa_r)) * self.value(k)


class RwkvClipTextBlock(GradientCheckpointingLayer):
    """One text block: ``x + att(ln1(x))`` then ``x + ffn(ln2(x))``, each sum through the
    residual dropout; block 0 first applies ``ln0`` to the embeddings."""

    def __init__(self, config, layer_id):
        super().__init__()
        c, eps = config.hidden_size, config.layer_norm_eps
        self.layer_id = layer_id
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(c, eps=eps)
        self.ln1 = nn.LayerNorm(c, eps=eps)
        self.ln2 = nn.LayerNorm(c, eps=eps)
        self.att = RwkvClipTextTimeMix(config, layer_id)
        self.ffn = RwkvClipTextChannelMix(config, layer_id)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x):
        if cpu_fused is not None:  # float32 CPU inference: the whole block as one C call
            fused = cpu_fused.run_text_block(self, x)
            if fused is not None:
                return fused
        if self.layer_id == 0:
            x = self.ln0(x)
        x = self.dropout(x + self.att(self.ln1(x), None))
        return self.dropout(x + self.ffn(self.ln2(x)))


class RwkvClipPreTrainedModel(RwkvHubMixin, PreTrainedModel):
    """Weight init (the official RWKV-CLIP text initialisation; the image tower initialises
    itself as a VRWKV6) and transformers settings of the RWKV-CLIP models."""

    config: RwkvClipConfig
    config_class = RwkvClipConfig
    base_model_prefix = "rwkv_clip"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["RwkvClipTextBlock", "VrwkvBlock"]
    # Decays sit in an exponent: kept fp32 when loading in bf16/fp16 (the official checkpoints
    # hold the text tower's time_decay / time_faaaa in bf16).
    _keep_in_fp32_modules_strict = ["time_decay", "time_faaaa", "logit_scale"]

    hub_family = "clip"

    def hub_auto_classes(self):
        if isinstance(self, RwkvClipTextModel):
            return {"AutoModel": RwkvClipTextModel}
        return {"AutoModel": RwkvClipModel, "AutoModelForZeroShotImageClassification": RwkvClipModel}

    def save_companions(self, save_directory):
        """When the folder has none: the default processor (:func:`default_processor`: OpenAI-
        normalised images, the CLIP BPE tokenizer), or for the text tower the tokenizer. The
        tokenizer only for the CLIP vocabulary (49408 ids); other vocabularies bring their own."""
        try:
            from rwkv_hf.clip import processing_rwkv_clip as processing
        except ImportError:  # remote code without rwkv_hf: no vocabulary file at hand
            return
        text = getattr(self.config, "text_config", self.config)
        clip_vocab = text.vocab_size == processing.VOCAB_SIZE
        if isinstance(self, RwkvClipTextModel):
            if clip_vocab and not os.path.exists(os.path.join(save_directory, "tokenizer_config.json")):
                processing.rwkv_clip_tokenizer(text.context_length).save_pretrained(save_directory)
        elif not any(os.path.exists(os.path.join(save_directory, n))
                     for n in ("processor_config.json", "preprocessor_config.json")):
            if clip_vocab:
                processing.default_processor(self.config.vision_config, text.context_length).save_pretrained(
                    save_directory)
            else:
                processing.default_image_processor(self.config.vision_config).save_pretrained(save_directory)

    def _init_weights(self, module):
        if isinstance(module, (RwkvClipTextTimeMix, RwkvClipTextChannelMix)):
            module.init_weights()
        elif isinstance(module, nn.Embedding):
            init.uniform_(module.weight, -1e-4, 1e-4)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, RwkvClipModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


def _orthogonal(linear, scale):
    """The official text init of a linear layer (``generate_init_weight_V6``): orthogonal with
    gain ``scale`` (times sqrt(out / in) for widening layers), zeros for scale 0."""
    out_f, in_f = linear.weight.shape
    if scale == 0:
        init.zeros_(linear.weight)
    else:
        init.orthogonal_(linear.weight, gain=scale * (math.sqrt(out_f / in_f) if out_f > in_f else 1.0))


class RwkvClipTextModel(RwkvClipPreTrainedModel):
    """The RWKV-CLIP text tower. ``forward`` returns the final-normed token features
    (``last_hidden_state``, [B, context_length, C]) and the text embedding (``pooler_output``:
    the mean of their L2-normalised rows over all positions, as the official model).

    The tower always reads ``config.context_length`` tokens, as it was trained: positions
    where ``attention_mask`` is 0 are replaced by ``config.pad_token_id`` and shorter inputs are
    right-padded with it (open_clip's padding), because padding enters the bidirectional
    recurrence and the mean. Pad on the right.

    ``RwkvClipTextModel.from_pretrained(clip_folder)`` loads the text tower of a whole
    RWKV-CLIP folder (its ``text_config`` and ``text_model.*`` weights).
    """

    config: RwkvClipTextConfig
    config_class = RwkvClipTextConfig
    base_model_prefix = "text_model"  # the tower's prefix in RwkvClipModel checkpoints
    main_input_name = "input_ids"
    input_modalities = ("text",)

    def __init__(self, config):
        super().__init__(config)
        self.emb = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(RwkvClipTextBlock(config, i) for i in range(config.num_hidden_layers))
        self.ln_out = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.emb

    def set_input_embeddings(self, value):
        self.emb = value

    def full_context(self, input_ids, attention_mask=None):
        """``input_ids`` [B, T <= context_length] as the tower reads them: masked positions
        replaced by the pad token, right-padded to ``context_length``."""
        cfg = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids)
            raise ValueError(f"input_ids must be a [batch, tokens] integer tensor, got {shape}")
        b, t = input_ids.shape
        if t > cfg.context_length:
            raise ValueError(f"the text tower reads at most context_length={cfg.context_length} tokens, got {t}: "
                             "truncate (the RWKV-CLIP processor does)")
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids "
                                 f"{tuple(input_ids.shape)}")
            input_ids = input_ids.masked_fill(attention_mask == 0, cfg.pad_token_id)
        if t < cfg.context_length:
            input_ids = F.pad(input_ids, (0, cfg.context_length - t), value=cfg.pad_token_id)
        return input_ids

    def forward(self, input_ids=None, attention_mask=None, output_hidden_states=None, return_dict=None, **kwargs):
        output_hidden_states = output_hidden_states if output_hidden_states is not None \
            else self.config.output_hidden_states
        x = self.emb(self.full_context(input_ids, attention_mask))
        hidden = [x]
        for block in self.blocks:
            x = block(x)
            hidden.append(x)
        x = self.ln_out(x)
        return BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=F.normalize(x, dim=-1).mean(1),
                                          hidden_states=tuple(hidden) if output_hidden_states else None)


class RwkvClipModel(RwkvClipPreTrainedModel):
    """RWKV-CLIP: ``image_model`` (VRWKV6) and ``text_model`` (:class:`RwkvClipTextModel`)
    trained contrastively. ``forward`` returns a ``CLIPOutput``: the cosine similarities of
    the image and text embeddings times exp(``logit_scale``) (``logits_per_image`` [images,
    texts], ``logits_per_text``), the normalised embeddings, and with ``return_loss`` the
    symmetric contrastive loss of the official training (matching pairs on the diagonal)."""

    config: RwkvClipConfig
    config_class = RwkvClipConfig
    main_input_name = "input_ids"

    def __init__(self, config):
        super().__init__(config)
        self.image_model = Vrwkv6Model(config.vision_config)
        self.text_model = RwkvClipTextModel(config.text_config)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.post_init()

    def get_input_embeddings(self):
        return self.text_model.emb

    def get_text_features(self, input_ids=None, attention_mask=None, **kwargs):
        """The text tower's output; ``pooler_output`` is the (unnormalised) text embedding."""
        return self.text_model(input_ids, attention_mask, **kwargs)

    def get_image_features(self, pixel_values=None, **kwargs):
        """The image tower's output; ``pooler_output`` is the (unnormalised) image embedding."""
        return self.image_model(pixel_values, **kwargs)

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, return_loss=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        vision = self.image_model(pixel_values, output_hidden_states=output_hidden_states)
        text = self.text_model(input_ids, attention_mask, output_hidden_states=output_hidden_states)
        image_embeds = F.normalize(vision.pooler_output, dim=-1)
        text_embeds = F.normalize(text.pooler_output, dim=-1)
        dtype = torch.promote_types(image_embeds.dtype, text_embeds.dtype)
        logits_per_text = self.logit_scale.exp().to(dtype) * (text_embeds.to(dtype) @ image_embeds.to(dtype).t())
        logits_per_image = logits_per_text.t()
        loss = contrastive_loss(logits_per_image) if return_loss else None
        return CLIPOutput(loss=loss, logits_per_image=logits_per_image, logits_per_text=logits_per_text,
                          text_embeds=text_embeds, image_embeds=image_embeds, text_model_output=text,
                          vision_model_output=vision)


RWKV_CLIP_CLASSES = (RwkvClipConfig, RwkvClipTextConfig, RwkvClipModel, RwkvClipTextModel)
