"""Vision-RWKV (VRWKV and VRWKV6) as transformers models.

One block layout for both versions, with the official parameter names
(OpenGVLab/Vision-RWKV, ``mmcls_custom/models/backbones/vrwkv.py`` and ``vrwkv6.py``):
``patch_embed.projection``, ``pos_embed``, ``layers.N.{ln0,ln1,ln2,att,ffn,gamma1,gamma2}``,
``ln1``. The classifier keeps the backbone under ``backbone.`` and its head under ``head.``
(``head.fc`` or, with ``classifier_hidden_size``, ``head.0`` / ``head.2``), which is the key
layout of the official classification checkpoints, of the timm models in ``timm_vrwkv`` and
of ``VrwkvBackbone`` (loaded from a classifier, it takes the ``backbone.`` weights).

Per block: ``x + attn(ln1(x))`` and ``x + ffn(ln2(x))`` (``post_norm``: ``x + ln1(attn(x))``,
``x + ln2(ffn(x))``), times the layer scale when set; block 0 first applies ``ln0``. Token
mixing is the Q-Shift (each quarter of the channels, per head for VRWKV6, taken from the
left, right, upper and lower neighbour patch) followed by the bidirectional WKV of
``rwkv_hf.ops`` (``bi_wkv4`` with the decay and bonus divided by the token count, as the
official code; ``bi_wkv6``). Classification averages the final-normed tokens.
"""
import importlib
import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (BackboneOutput, BaseModelOutputWithPooling,
                                           ImageClassifierOutput)

from .. import ops
from ..hub_mixin import RwkvHubMixin
from ..modeling_utils import DropPath, check_pixel_values, layer_ratios, ramp, sqrelu
from .configuration_vrwkv import Vrwkv6Config, VrwkvConfig
from .image_processing_vrwkv import default_image_processor

# The package's fused CPU kernel of the Q-Shift lerps; remote-code copies of this file run the
# eager form (imported by name so that transformers' remote-code import scan does not look for it).
cpu_fused = (importlib.import_module("rwkv_hf.vision.cpu_fused")
             if __name__ == "rwkv_hf.vision.modeling_vrwkv" else None)

# --------------------------------------------------------------------------- helpers


def q_shift(x, grid, shift_pixel, gamma, group):
    """Quad-directional shift of ``x`` [B, N, C] laid out on ``grid`` (rows, cols), row-major.

    Channels are taken in groups of ``group`` (C for VRWKV, the head size for VRWKV6); in each
    group the first ``gamma`` fraction comes from ``shift_pixel`` patches to the left, the
    next from the right, then from above and from below; the rest is not shifted. Borders
    are zero-filled.
    """
    b, n, c = x.shape
    h, w = grid
    x = x.view(b, h, w, c // group, group)
    out = torch.zeros_like(x)
    s = shift_pixel
    e = [int(group * gamma * i) for i in range(5)]  # the official boundaries
    ws, hs = max(w - s, 0), max(h - s, 0)
    out[:, :, s:, :, e[0]:e[1]] = x[:, :, :ws, :, e[0]:e[1]]
    out[:, :, :ws, :, e[1]:e[2]] = x[:, :, s:, :, e[1]:e[2]]
    out[:, s:, :, :, e[2]:e[3]] = x[:, :hs, :, :, e[2]:e[3]]
    out[:, :hs, :, :, e[3]:e[4]] = x[:, s:, :, :, e[3]:e[4]]
    out[..., e[4]:] = x[..., e[4]:]
    return out.view(b, n, c)


def tokens_to_map(tokens, grid):
    """Tokens [B, N, C] laid out row-major on ``grid`` -> an NCHW feature map [B, C, rows, cols]."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def resize_pos_embed(pos_embed, src_grid, dst_grid, mode="bicubic"):
    """Position embeddings [1, N, C] of ``src_grid`` resampled to ``dst_grid`` (as mmcls)."""
    if tuple(src_grid) == tuple(dst_grid):
        return pos_embed
    c = pos_embed.shape[-1]
    grid = pos_embed.reshape(1, *src_grid, c).permute(0, 3, 1, 2)
    half = grid.dtype in (torch.float16, torch.bfloat16)  # bicubic needs fp32 there
    grid = F.interpolate(grid.float() if half else grid, size=tuple(dst_grid), mode=mode, align_corners=False)
    return grid.flatten(2).transpose(1, 2).to(pos_embed.dtype)


def _is_v6(config):
    # by model type, not isinstance: remote code may load the config class from another copy
    # of configuration_vrwkv.py than the one this module imported
    return config.model_type == Vrwkv6Config.model_type


def _linear(c_in, c_out):
    return nn.Linear(c_in, c_out, bias=False)


# --------------------------------------------------------------------------- mixers


def q_shift_lerp(x, grid, shift_pixel, gamma, group, mus):
    """``torch.lerp(q_shift(x), x, mu)`` for each of ``mus`` (``q_shift(x)`` itself for a None).
    Float32 CPU inference runs it as one fused pass (:mod:`rwkv_hf.vision.cpu_fused`)."""
    if cpu_fused is not None:
        fused = cpu_fused.q_shift_lerp(x, grid, shift_pixel, gamma, group, mus)
        if fused is not None:
            return fused
    xx = q_shift(x, grid, shift_pixel, gamma, group)
    return [xx if mu is None else torch.lerp(xx, x, mu) for mu in mus]


class VrwkvSpatialMix(nn.Module):
    """VRWKV token mixing: Q-Shift lerp, then ``W_o(sigmoid(r) * BiWKV4(k, v))``."""

    def __init__(self, config, layer_id):
        super().__init__()
        c = config.hidden_size
        self.layer_id, self.num_layers = layer_id, config.num_hidden_layers
        self.shift = (config.shift_pixel, config.channel_gamma, c)
        self.spatial_decay = nn.Parameter(torch.empty(c))
        self.spatial_first = nn.Parameter(torch.empty(c))
        self.spatial_mix_k = nn.Parameter(torch.empty(1, 1, c))
        self.spatial_mix_v = nn.Parameter(torch.empty(1, 1, c))
        self.spatial_mix_r = nn.Parameter(torch.empty(1, 1, c))
        self.key, self.value, self.receptance = _linear(c, c), _linear(c, c), _linear(c, c)
        self.key_norm = nn.LayerNorm(c, eps=config.layer_norm_eps) if config.key_norm else None
        self.output = _linear(c, c)

    def init_weights(self):
        c = self.spatial_decay.numel()
        r0to1, r1a0 = layer_ratios(self.layer_id, self.num_layers)
        n = torch.arange(c, dtype=torch.float32)
        init.copy_(self.spatial_decay, -5 + 8 * (n / max(c - 1, 1)) ** (0.7 + 1.3 * r0to1))
        init.copy_(self.spatial_first, math.log(0.3) + ((n + 1) % 3 - 1) * 0.5)
        x = ramp(c).view(1, 1, c)
        init.copy_(self.spatial_mix_k, x ** r1a0)
        init.copy_(self.spatial_mix_v, x ** r1a0 + 0.3 * r0to1)
        init.copy_(self.spatial_mix_r, x ** (0.5 * r1a0))

    def forward(self, x, grid):
        xk, xv, xr = q_shift_lerp(x, grid, *self.shift, (self.spatial_mix_k, self.spatial_mix_v, self.spatial_mix_r))
        k, v, r = self.key(xk), self.value(xv), self.receptance(xr)
        t = x.shape[1]
        # The official code divides the decay and the bonus by the token count.
        y, _ = ops.bi_wkv4(k, v, -self.spatial_decay / t, self.spatial_first / t)
        if self.key_norm is not None:
            y = self.key_norm(y)
        return self.output(torch.sigmoid(r) * y)


class Vrwkv6SpatialMix(nn.Module):
    """VRWKV6 token mixing: data-dependent lerp of the Q-Shift (ddlerp), per-token decay,
    ``W_o(GroupNorm(BiWKV6(r, k, v)) * silu(W_g x))``."""

    def __init__(self, config, layer_id):
        super().__init__()
        c, d_mix, d_decay = config.hidden_size, config.time_mix_extra_dim, config.time_decay_extra_dim
        self.layer_id, self.num_layers = layer_id, config.num_hidden_layers
        self.num_heads, self.head_size = config.num_heads, config.head_size
        # (RWKV-CLIP's text tower reuses this mixer: its config has no 2-D shift and no key norm)
        self.shift = (getattr(config, "shift_pixel", 1), 0.25, config.head_size)
        for name in "xwkvrg":
            setattr(self, f"time_maa_{name}", nn.Parameter(torch.empty(1, 1, c)))
        self.time_maa_w1 = nn.Parameter(torch.empty(c, 5 * d_mix))
        self.time_maa_w2 = nn.Parameter(torch.empty(5, d_mix, c))
        self.time_decay = nn.Parameter(torch.empty(1, 1, c))
        self.time_decay_w1 = nn.Parameter(torch.empty(c, d_decay))
        self.time_decay_w2 = nn.Parameter(torch.empty(d_decay, c))
        self.time_faaaa = nn.Parameter(torch.empty(self.num_heads, self.head_size))
        self.key, self.value, self.receptance = _linear(c, c), _linear(c, c), _linear(c, c)
        self.gate = _linear(c, c)
        self.key_norm = nn.LayerNorm(c, eps=config.layer_norm_eps) if getattr(config, "key_norm", False) else None
        self.output = _linear(c, c)
        self.ln_x = nn.GroupNorm(self.num_heads, c, eps=config.group_norm_eps)

    def init_weights(self):
        c = self.time_decay.numel()
        r0to1, r1a0 = layer_ratios(self.layer_id, self.num_layers)
        x = ramp(c).view(1, 1, c)
        for name, curve in (("x", x ** r1a0), ("w", x ** r1a0), ("k", x ** r1a0),
                            ("v", x ** r1a0 + 0.3 * r0to1), ("r", x ** (0.5 * r1a0)), ("g", x ** (0.5 * r1a0))):
            init.copy_(getattr(self, f"time_maa_{name}"), 1 - curve)
        for lora in (self.time_maa_w1, self.time_maa_w2, self.time_decay_w1, self.time_decay_w2):
            init.uniform_(lora, -1e-4, 1e-4)
        n = torch.arange(c, dtype=torch.float32) / max(c - 1, 1)
        init.copy_(self.time_decay, (-6 + 5 * n ** (0.7 + 1.3 * r0to1)).view(1, 1, c))
        zigzag = ((torch.arange(c) + 1) % 3 - 1) * 0.1
        init.copy_(self.time_faaaa, (r0to1 * (1 - n) + zigzag).view(self.num_heads, self.head_size))
        init.ones_(self.ln_x.weight)
        init.zeros_(self.ln_x.bias)

    def token_shift(self, x, grid):
        """The shifted tokens the ddlerp mixes with ``x`` (here the per-head Q-Shift)."""
        return q_shift_lerp(x, grid, *self.shift, (None,))[0]

    def forward(self, x, grid):
        b, t, c = x.shape
        xx = self.token_shift(x, grid) - x
        xxx = torch.tanh((x + xx * self.time_maa_x) @ self.time_maa_w1)
        xxx = torch.bmm(xxx.view(b * t, 5, -1).transpose(0, 1), self.time_maa_w2).view(5, b, t, c)
        mw, mk, mv, mr, mg = xxx.unbind(0)
        r = self.receptance(x + xx * (self.time_maa_r + mr))
        k = self.key(x + xx * (self.time_maa_k + mk))
        v = self.value(x + xx * (self.time_maa_v + mv))
        g = F.silu(self.gate(x + xx * (self.time_maa_g + mg)))
        # The decay path runs in the dtype of its (fp32-kept) parameters: it ends in an exponent.
        xw = (x + xx * (self.time_maa_w + mw)).to(self.time_decay_w1.dtype)
        w = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2
        heads = (b, t, self.num_heads, self.head_size)
        y, _ = ops.bi_wkv6(r.view(heads), k.view(heads), v.view(heads), -torch.exp(w.to(torch.promote_types(w.dtype, torch.float32))).view(heads),
                           self.time_faaaa)
        y = y.reshape(b, t, c)
        if self.key_norm is not None:
            y = self.key_norm(y)
        y = self.ln_x(y.view(b * t, c)).view(b, t, c)
        return self.output(y * g)


class VrwkvChannelMix(nn.Module):
    """``sigmoid(W_r x_r) * W_v relu(W_k x_k)^2`` on the Q-Shift lerp (both versions)."""

    def __init__(self, config, layer_id):
        super().__init__()
        c, f = config.hidden_size, config.intermediate_size
        self.layer_id, self.num_layers = layer_id, config.num_hidden_layers
        if _is_v6(config):  # VRWKV6 shifts per head, a quarter each way
            self.shift = (config.shift_pixel, 0.25, config.head_size)
        else:
            self.shift = (config.shift_pixel, config.channel_gamma, c)
        self.spatial_mix_k = nn.Parameter(torch.empty(1, 1, c))
        self.spatial_mix_r = nn.Parameter(torch.empty(1, 1, c))
        self.key = _linear(c, f)
        self.key_norm = nn.LayerNorm(f, eps=config.layer_norm_eps) if config.key_norm else None
        self.receptance = _linear(c, c)
        self.value = _linear(f, c)

    def init_weights(self):
        c = self.spatial_mix_k.numel()
        curve = ramp(c).view(1, 1, c) ** layer_ratios(self.layer_id, self.num_layers)[1]
        init.copy_(self.spatial_mix_k, curve)
        init.copy_(self.spatial_mix_r, curve)

    def forward(self, x, grid):
        xr, xk = q_shift_lerp(x, grid, *self.shift, (self.spatial_mix_r, self.spatial_mix_k))
        r = torch.sigmoid(self.receptance(xr))
        k = sqrelu(self.key(xk))
        del xr, xk  # the 4C-wide keys are the peak: hold as little else as possible
        if self.key_norm is not None:
            k = self.key_norm(k)
        return r * self.value(k)


class VrwkvBlock(GradientCheckpointingLayer):
    """One Vision-RWKV block (pre-norm, or post-norm with ``config.post_norm``)."""

    def __init__(self, config, layer_id, drop_path):
        super().__init__()
        c, eps = config.hidden_size, config.layer_norm_eps
        self.layer_id, self.post_norm = layer_id, config.post_norm
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(c, eps=eps)
        self.ln1 = nn.LayerNorm(c, eps=eps)
        self.ln2 = nn.LayerNorm(c, eps=eps)
        spatial = Vrwkv6SpatialMix if _is_v6(config) else VrwkvSpatialMix
        self.att = spatial(config, layer_id)
        self.ffn = VrwkvChannelMix(config, layer_id)
        if config.layer_scale_init_value is not None:
            self.gamma1 = nn.Parameter(torch.empty(c))
            self.gamma2 = nn.Parameter(torch.empty(c))
        else:
            self.gamma1 = self.gamma2 = None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _scale(self, x, gamma):
        return x if gamma is None else gamma * x

    def forward(self, x, grid):
        if cpu_fused is not None:  # float32 CPU inference: the whole block as one C call
            fused = cpu_fused.run_block(self, x, grid)
            if fused is not None:
                return fused
        if self.layer_id == 0:
            x = self.ln0(x)
        if self.post_norm:
            x = x + self.drop_path(self._scale(self.ln1(self.att(x, grid)), self.gamma1))
            x = x + self.drop_path(self._scale(self.ln2(self.ffn(x, grid)), self.gamma2))
        else:
            x = x + self.drop_path(self._scale(self.att(self.ln1(x), grid), self.gamma1))
            x = x + self.drop_path(self._scale(self.ffn(self.ln2(x), grid), self.gamma2))
        return x


class VrwkvPatchEmbed(nn.Module):
    """Conv patch embedding; inputs whose sides are not a multiple of the patch size are
    zero-padded at the bottom and right first (mmcv's ``PatchEmbed(padding='corner')``)."""

    def __init__(self, config):
        super().__init__()
        self.patch_size = config.patch_size
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size,
                                    stride=config.patch_size)

    def forward(self, pixel_values):
        p = self.patch_size
        h, w = pixel_values.shape[-2:]
        pad_h, pad_w = -h % p, -w % p
        if pad_h or pad_w:
            pixel_values = F.pad(pixel_values, (0, pad_w, 0, pad_h))
        x = self.projection(pixel_values)
        return x.flatten(2).transpose(1, 2), tuple(x.shape[-2:])


class VrwkvClassifierHead(nn.Module):
    """``head.fc``: the single linear layer of mmcls' ``LinearClsHead``."""

    def __init__(self, hidden_size, num_labels):
        super().__init__()
        self.fc = nn.Linear(hidden_size, num_labels)

    def forward(self, pooled):
        return self.fc(pooled)


def build_head(hidden_size, num_labels, classifier_hidden_size=None):
    """The classification head: ``head.fc`` (T/S/B) or ``head.0`` / Tanh / ``head.2`` (the
    MLP head of VRWKV-L); Identity for ``num_labels == 0``."""
    if num_labels == 0:
        return nn.Identity()
    if classifier_hidden_size:
        return nn.Sequential(nn.Linear(hidden_size, classifier_hidden_size), nn.Tanh(),
                             nn.Linear(classifier_hidden_size, num_labels))
    return VrwkvClassifierHead(hidden_size, num_labels)


# --------------------------------------------------------------------------- models


class VrwkvPreTrainedModelBase(RwkvHubMixin, PreTrainedModel):
    """Weight init (the official "fancy" init of the mixing parameters, truncated-normal
    linear layers) and transformers settings shared by the Vision-RWKV models."""

    base_model_prefix = "backbone"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["VrwkvBlock"]
    # Decays sit in an exponent: kept fp32 when loading in bf16/fp16.
    _keep_in_fp32_modules_strict = ["spatial_decay", "spatial_first", "time_decay", "time_faaaa"]

    hub_family = "vision"

    def hub_auto_classes(self):
        _, base, classifier, backbone = VRWKV_CLASSES[6 if _is_v6(self.config) else 4]
        return {"AutoModel": base, "AutoModelForImageClassification": classifier, "AutoBackbone": backbone}

    def save_companions(self, save_directory):
        """The default image processor (:func:`default_image_processor`) when the folder has none."""
        if not os.path.exists(os.path.join(save_directory, "preprocessor_config.json")):
            default_image_processor(self.config).save_pretrained(save_directory)

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (VrwkvSpatialMix, Vrwkv6SpatialMix, VrwkvChannelMix)):
            module.init_weights()
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, VrwkvBlock) and module.gamma1 is not None:
            init.constant_(module.gamma1, self.config.layer_scale_init_value)
            init.constant_(module.gamma2, self.config.layer_scale_init_value)
        elif isinstance(module, VrwkvModelBase):
            init.trunc_normal_(module.pos_embed, std=std)


class VrwkvModelBase:
    """The Vision-RWKV trunk: patch embedding + position embedding, the blocks, the final
    norm. ``forward`` returns the final-normed tokens [B, N, C] (``last_hidden_state``), their
    mean (``pooler_output``) and, on request, every block's output (``hidden_states``: the
    embeddings then block 1 ... L, before the final norm)."""

    def __init__(self, config):
        super().__init__(config)
        self.patch_embed = VrwkvPatchEmbed(config)
        rows, cols = config.patch_grid
        self.pos_embed = nn.Parameter(torch.empty(1, rows * cols, config.hidden_size))
        self.drop_after_pos = nn.Dropout(config.hidden_dropout_prob)
        n = config.num_hidden_layers  # stochastic depth rising linearly from 0 (plain floats: meta-safe)
        rates = [config.drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        self.layers = nn.ModuleList(VrwkvBlock(config, i, rates[i]) for i in range(n))
        self.ln1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.final_norm else None
        self.post_init()

    def get_input_embeddings(self):
        return self.patch_embed.projection

    def _check_pixels(self, pixel_values):
        cfg = self.config
        check_pixel_values(pixel_values, cfg.num_channels)
        h, w = pixel_values.shape[-2:]
        if h < cfg.patch_size or w < cfg.patch_size:
            raise ValueError(f"the image ({h}x{w} pixels) is smaller than one {cfg.patch_size}x{cfg.patch_size} patch")

    def embed(self, pixel_values):
        """Tokens [B, N, C] with position embeddings, and the patch grid (rows, cols)."""
        self._check_pixels(pixel_values)
        dtype = self.patch_embed.projection.weight.dtype
        x, grid = self.patch_embed(pixel_values.to(dtype))
        x = x + resize_pos_embed(self.pos_embed, self.config.patch_grid, grid)
        return self.drop_after_pos(x), grid

    def run_layers(self, x, grid, collect=(), stop=None):
        """Run blocks 0 .. ``stop`` - 1 (all by default); returns the last output and the
        outputs of the blocks whose index is in ``collect`` (before the final norm)."""
        taken = []
        for i, layer in enumerate(self.layers[:stop]):
            x = layer(x, grid)
            if i in collect:
                taken.append(x)
        return x, taken

    def final_norm(self, x):
        return x if self.ln1 is None else self.ln1(x)

    def forward(self, pixel_values=None, output_hidden_states=None, return_dict=None, **kwargs):
        output_hidden_states = output_hidden_states if output_hidden_states is not None \
            else self.config.output_hidden_states
        x, grid = self.embed(pixel_values)
        collect = range(len(self.layers)) if output_hidden_states else ()
        last, taken = self.run_layers(x, grid, collect)
        last = self.final_norm(last)
        return BaseModelOutputWithPooling(
            last_hidden_state=last, pooler_output=last.mean(1),
            hidden_states=(x, *taken) if output_hidden_states else None)


class VrwkvForImageClassificationBase:
    """Vision-RWKV image classifier: the mean of the final-normed tokens through ``head``
    (mmcls' GlobalAveragePooling + LinearClsHead). ``labels`` give the loss."""

    def __init__(self, config):
        super().__init__(config)
        self.backbone = self.base_model_class(config)
        self.head = build_head(config.hidden_size, config.num_labels, config.classifier_hidden_size)
        self.post_init()

    def forward(self, pixel_values=None, labels=None, output_hidden_states=None, return_dict=None, **kwargs):
        out = self.backbone(pixel_values, output_hidden_states=output_hidden_states)
        logits = self.head(out.pooler_output)
        loss = None if labels is None else self.loss_function(labels, logits, self.config, **kwargs)
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


class VrwkvBackboneBase(BackboneMixin):
    """Vision-RWKV as a transformers backbone: NCHW feature maps of the stages in
    ``config.out_features`` (``stem`` = the embedded patches, ``stageK`` = block K's output;
    the last block's output is final-normed, as the official ``VRWKV.forward``). All maps
    have stride ``patch_size``."""

    has_attentions = False

    def __init__(self, config):
        super().__init__(config)
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)

    def forward(self, pixel_values=None, output_hidden_states=None, return_dict=None, **kwargs):
        output_hidden_states = output_hidden_states if output_hidden_states is not None \
            else self.config.output_hidden_states
        x, grid = self.embed(pixel_values)
        wanted = [self.stage_names.index(s) for s in self.out_features]
        last_block = len(self.layers) - 1
        collect = range(len(self.layers)) if output_hidden_states else [i - 1 for i in wanted if i > 0]
        stop = None if output_hidden_states else max(wanted)
        last, taken = self.run_layers(x, grid, collect, stop)
        stages = dict(zip([-1, *collect], [x, *taken]))
        maps = []
        for i in wanted:
            t = stages[i - 1]
            if i - 1 == last_block:
                t = self.final_norm(t)
            maps.append(tokens_to_map(t, grid))
        hidden = (x, *taken) if output_hidden_states else None
        return BackboneOutput(feature_maps=tuple(maps), hidden_states=hidden)


def _family_classes(prefix, config_class):
    attrs = {"config_class": config_class, "__module__": __name__, "__annotations__": {"config": config_class}}
    pretrained = type(f"{prefix}PreTrainedModel", (VrwkvPreTrainedModelBase,), dict(attrs))
    base = type(f"{prefix}Model", (VrwkvModelBase, pretrained), dict(attrs))
    classifier = type(f"{prefix}ForImageClassification", (VrwkvForImageClassificationBase, pretrained),
                      dict(attrs, base_model_class=base))
    backbone = type(f"{prefix}Backbone", (VrwkvBackboneBase, base), dict(attrs))
    name = "VRWKV6 (bidirectional RWKV-6 WKV)" if config_class is Vrwkv6Config else "VRWKV (bidirectional RWKV-4 WKV)"
    for cls, base_cls in ((base, VrwkvModelBase), (classifier, VrwkvForImageClassificationBase),
                          (backbone, VrwkvBackboneBase)):
        cls.__doc__ = f"{name}. {base_cls.__doc__}"
    return pretrained, base, classifier, backbone


(VrwkvPreTrainedModel, VrwkvModel, VrwkvForImageClassification,
 VrwkvBackbone) = _family_classes("Vrwkv", VrwkvConfig)
(Vrwkv6PreTrainedModel, Vrwkv6Model, Vrwkv6ForImageClassification,
 Vrwkv6Backbone) = _family_classes("Vrwkv6", Vrwkv6Config)

VRWKV_CLASSES = {
    4: (VrwkvConfig, VrwkvModel, VrwkvForImageClassification, VrwkvBackbone),
    6: (Vrwkv6Config, Vrwkv6Model, Vrwkv6ForImageClassification, Vrwkv6Backbone),
}
