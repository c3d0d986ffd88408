"""Restore-RWKV as transformers models: an image-restoration U-Net of RWKV blocks
(Yaziwel/Restore-RWKV, ``model/Restore_RWKV.py``; arXiv 2407.11087).

The module and parameter names are the official ones (``patch_embed``, ``encoder_level1``
... ``refinement``, ``output``; ``att.omni_shift.conv5x5.weight``, ``att.spatial_decay``),
so :class:`RestoreRwkvForImageRestoration`'s state dict is the official one under
``restore_rwkv.`` (the trunk) plus ``output.`` (the last convolution), less the derived
``omni_shift.conv5x5_reparam.weight``.

Per block, on the tokens of the feature map (row-major): ``x + gamma1 * att(ln1(x))`` and
``x + gamma2 * ffn(ln2(x))``. Both mixers first apply the Omni-Shift, a depthwise 5x5
convolution whose kernel is ``alpha0 * identity + alpha1 * w1x1 + alpha2 * w3x3 +
alpha3 * w5x5`` (the official code runs the four branches while training and this fold in
evaluation: the same function; here always the fold, one convolution). The token mixing is
the Re-WKV: ``rwkv_hf.ops.bi_wkv4`` with the decay and bonus divided by the token count, over
the rows, then over the columns (the keys and the previous pass's output transposed), and
so on for ``recurrence`` passes; then ``W_o(sigmoid(r) * wkv)``. The channel mixing is
``sigmoid(W_r x) * W_v relu(W_k x)^2``.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, ImageSuperResolutionOutput

from .. import ops
from ..hub_mixin import RwkvHubMixin
from ..modeling_utils import check_pixel_values, sqrelu
from .configuration_restore_rwkv import RestoreRwkvConfig

# Three 2x downsamplings: inputs are padded to multiples of this.
SIZE_MULTIPLE = 8


class DepthwiseKernel(nn.Module):
    """The ``weight`` [C, 1, k, k] of a depthwise convolution that OmniShift folds into its own
    (no forward of its own: a plain Conv2d here would be a module that never runs, which
    PEFT could wrap to no effect)."""

    def __init__(self, channels, size):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, 1, size, size))


class OmniShift(nn.Module):
    """Omni-Shift: ``alpha0 * x + alpha1 * dw1x1(x) + alpha2 * dw3x3(x) + alpha3 * dw5x5(x)``
    on a [B, C, H, W] map, computed as one depthwise 5x5 convolution with the folded kernel."""

    def __init__(self, channels):
        super().__init__()
        self.conv1x1 = DepthwiseKernel(channels, 1)
        self.conv3x3 = DepthwiseKernel(channels, 3)
        self.conv5x5 = DepthwiseKernel(channels, 5)
        self.alpha = nn.Parameter(torch.empty(4))

    def folded_kernel(self):
        """The 5x5 depthwise kernel equal to the four branches: the official ``reparam_5x5``, in
        its order of operations (the same bits; the converter writes it back as
        ``conv5x5_reparam.weight``)."""
        w1, w3, w5 = self.conv1x1.weight, self.conv3x3.weight, self.conv5x5.weight
        a = self.alpha.to(w5.dtype)
        identity = F.pad(torch.ones_like(w1), (2, 2, 2, 2))
        return a[0] * identity + a[1] * F.pad(w1, (2, 2, 2, 2)) + a[2] * F.pad(w3, (1, 1, 1, 1)) + a[3] * w5

    def forward(self, x):
        return F.conv2d(x, self.folded_kernel(), padding=2, groups=x.shape[1])


# The maps between blocks are channels-last in memory: tokens [B, H*W, C] (row-major) and
# maps [B, C, H, W] are then views of each other, and the depthwise convolutions read and
# write that layout, so no block copies its input or output to change layout.

def _map_to_tokens(x):
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view when x is channels-last


def _tokens_to_map(x, hw):
    return x.reshape(x.shape[0], *hw, x.shape[2]).permute(0, 3, 1, 2)  # a channels-last view


def _transpose_grid(x, hw):
    """Tokens [B, H*W, C] in row-major order of an (H, W) grid -> column-major order."""
    b, _, c = x.shape
    return x.reshape(b, hw[0], hw[1], c).transpose(1, 2).reshape(b, -1, c)


def _linear(c_in, c_out):
    return nn.Linear(c_in, c_out, bias=False)


class RestoreRwkvSpatialMix(nn.Module):
    """Token mixing: Omni-Shift, then ``W_o(sigmoid(r) * ReWKV(k, v))``."""

    def __init__(self, config, width):
        super().__init__()
        self.recurrence = config.recurrence
        self.omni_shift = OmniShift(width)
        self.key, self.value, self.receptance = _linear(width, width), _linear(width, width), _linear(width, width)
        self.output = _linear(width, width)
        self.spatial_decay = nn.Parameter(torch.empty(config.recurrence, width))
        self.spatial_first = nn.Parameter(torch.empty(config.recurrence, width))

    def forward(self, x, hw):
        x = _map_to_tokens(self.omni_shift(_tokens_to_map(x, hw)))
        k, v, r = self.key(x), self.value(x), self.receptance(x)
        t = x.shape[1]
        for j in range(self.recurrence):
            # The official code divides the decay and the bonus by the token count; odd passes
            # scan the columns (keys and values transposed to column-major order, and back).
            w, u = -self.spatial_decay[j] / t, self.spatial_first[j] / t
            if j % 2 == 0:
                v, _ = ops.bi_wkv4(k, v, w, u)
            else:
                cols = (hw[1], hw[0])
                v, _ = ops.bi_wkv4(_transpose_grid(k, hw), _transpose_grid(v, hw), w, u)
                v = _transpose_grid(v, cols)
        return self.output(torch.sigmoid(r) * v)


class RestoreRwkvChannelMix(nn.Module):
    """Channel mixing: Omni-Shift, then ``sigmoid(W_r x) * W_v relu(W_k x)^2``."""

    def __init__(self, config, width):
        super().__init__()
        hidden = config.hidden_rate * width
        self.key = _linear(width, hidden)  # the official order of registration (state dict order)
        self.omni_shift = OmniShift(width)
        self.receptance, self.value = _linear(width, width), _linear(hidden, width)

    def forward(self, x, hw):
        x = _map_to_tokens(self.omni_shift(_tokens_to_map(x, hw)))
        return torch.sigmoid(self.receptance(x)) * self.value(sqrelu(self.key(x)))


class RestoreRwkvBlock(GradientCheckpointingLayer):
    """``x + gamma1 * att(ln1(x))``, then ``x + gamma2 * ffn(ln2(x))``, on a [B, C, H, W] map."""

    def __init__(self, config, width):
        super().__init__()
        self.ln1 = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.ln2 = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.att = RestoreRwkvSpatialMix(config, width)
        self.ffn = RestoreRwkvChannelMix(config, width)
        self.gamma1 = nn.Parameter(torch.empty(width))
        self.gamma2 = nn.Parameter(torch.empty(width))

    def forward(self, x):
        hw = x.shape[2:]
        t = _map_to_tokens(x.contiguous(memory_format=torch.channels_last))  # no copy after the first block
        t = t + self.gamma1 * self.att(self.ln1(t), hw)
        t = t + self.gamma2 * self.ffn(self.ln2(t), hw)
        return _tokens_to_map(t, hw)


class Resample(nn.Module):
    """The official ``Downsample`` (3x3 convolution to half the channels, then pixel-unshuffle:
    twice the channels at half the resolution) and ``Upsample`` (to twice the channels, then
    pixel-shuffle: half the channels at twice the resolution)."""

    def __init__(self, width, down):
        super().__init__()
        conv = nn.Conv2d(width, width // 2 if down else width * 2, 3, padding=1, bias=False)
        self.body = nn.Sequential(conv, nn.PixelUnshuffle(2) if down else nn.PixelShuffle(2))

    def forward(self, x):
        return self.body(x)


def _stage(config, width, n):
    return nn.Sequential(*(RestoreRwkvBlock(config, width) for _ in range(n)))


class RestoreRwkvPreTrainedModel(RwkvHubMixin, PreTrainedModel):
    """Weight init (the official code's: PyTorch's default layers, the WKV decays and bonuses
    and the Omni-Shift weights standard normal, the layer scales one) and transformers
    settings."""

    config_class = RestoreRwkvConfig
    config: RestoreRwkvConfig
    base_model_prefix = "restore_rwkv"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["RestoreRwkvBlock"]
    # The decays sit in an exponent: kept fp32 when loading in bf16/fp16.
    _keep_in_fp32_modules_strict = ["spatial_decay", "spatial_first"]

    hub_family = "restore"

    def hub_auto_classes(self):
        return {"AutoModel": RestoreRwkvModel, "AutoModelForImageToImage": RestoreRwkvForImageRestoration}

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Conv2d, DepthwiseKernel)):  # PyTorch's defaults
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if getattr(module, "bias", None) is not None:
                fan_in = module.weight[0].numel()
                init.uniform_(module.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, RestoreRwkvSpatialMix):
            init.normal_(module.spatial_decay)
            init.normal_(module.spatial_first)
        elif isinstance(module, OmniShift):
            init.normal_(module.alpha)
        elif isinstance(module, RestoreRwkvBlock):
            init.ones_(module.gamma1)
            init.ones_(module.gamma2)


def pad_to_multiple(pixel_values, multiple=SIZE_MULTIPLE):
    """``pixel_values`` [B, C, H, W] padded at the bottom and right to multiples of ``multiple``
    (by reflection; by replication where the image is too small to reflect)."""
    h, w = pixel_values.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not ph and not pw:
        return pixel_values
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(pixel_values, (0, pw, 0, ph), mode=mode)


class RestoreRwkvModel(RestoreRwkvPreTrainedModel):
    """The Restore-RWKV trunk: the 3x3 patch embedding, the encoder (levels 1 to 3 and the
    latent level 4, each level half the resolution and twice the channels of the one above),
    the decoder (skip connections concatenated; 1x1 reductions at levels 3 and 2) and the
    refinement blocks. ``forward`` returns the refined features [B, 2 * hidden_size, H, W]
    (``last_hidden_state``) and, on request, each stage's output (``hidden_states``: the
    embedding, encoder levels 1 to 3, the latent, decoder levels 3 to 1, the refinement;
    at the padded size)."""

    def __init__(self, config):
        super().__init__(config)
        c, n = config.level_width, config.num_blocks
        self.patch_embed = nn.Conv2d(config.num_channels, c(1), 3, padding=1)
        self.encoder_level1 = _stage(config, c(1), n[0])
        self.down1_2 = Resample(c(1), down=True)
        self.encoder_level2 = _stage(config, c(2), n[1])
        self.down2_3 = Resample(c(2), down=True)
        self.encoder_level3 = _stage(config, c(3), n[2])
        self.down3_4 = Resample(c(3), down=True)
        self.latent = _stage(config, c(4), n[3])
        self.up4_3 = Resample(c(4), down=False)
        self.reduce_chan_level3 = nn.Conv2d(c(4), c(3), 1)
        self.decoder_level3 = _stage(config, c(3), n[2])
        self.up3_2 = Resample(c(3), down=False)
        self.reduce_chan_level2 = nn.Conv2d(c(3), c(2), 1)
        self.decoder_level2 = _stage(config, c(2), n[1])
        self.up2_1 = Resample(c(2), down=False)  # no reduction: level 1's decoder runs at 2 * hidden_size
        self.decoder_level1 = _stage(config, c(2), n[0])
        self.refinement = _stage(config, c(2), config.num_refinement_blocks)
        self.post_init()

    def get_input_embeddings(self):
        return self.patch_embed

    def check_pixels(self, pixel_values):
        """Raise ValueError unless ``pixel_values`` is a finite [B, num_channels, H, W] float tensor."""
        check_pixel_values(pixel_values, self.config.num_channels)

    def features(self, padded, collect=False):
        """The refined features of ``padded`` (sides multiples of 8), and the stages' outputs
        when ``collect``."""
        stages = []

        def keep(x):
            if collect:
                stages.append(x)
            return x

        x = keep(self.patch_embed(padded))
        enc1 = keep(self.encoder_level1(x))
        enc2 = keep(self.encoder_level2(self.down1_2(enc1)))
        enc3 = keep(self.encoder_level3(self.down2_3(enc2)))
        x = keep(self.latent(self.down3_4(enc3)))
        x = self.reduce_chan_level3(torch.cat([self.up4_3(x), enc3], 1))
        x = keep(self.decoder_level3(x))
        x = self.reduce_chan_level2(torch.cat([self.up3_2(x), enc2], 1))
        x = keep(self.decoder_level2(x))
        x = keep(self.decoder_level1(torch.cat([self.up2_1(x), enc1], 1)))
        x = keep(self.refinement(x))
        return x, tuple(stages) if collect else None

    def forward(self, pixel_values=None, output_hidden_states=None, return_dict=None, **kwargs):
        output_hidden_states = output_hidden_states if output_hidden_states is not None \
            else self.config.output_hidden_states
        self.check_pixels(pixel_values)
        h, w = pixel_values.shape[-2:]
        padded = pad_to_multiple(pixel_values.to(self.patch_embed.weight.dtype))
        x, stages = self.features(padded, collect=output_hidden_states)
        return BaseModelOutput(last_hidden_state=x[..., :h, :w], hidden_states=stages)


class RestoreRwkvForImageRestoration(RestoreRwkvPreTrainedModel):
    """Restore-RWKV image restoration (denoising, super-resolution of an upsampled image,
    synthesis): the trunk, a 3x3 convolution to ``out_channels``, plus the input image
    (``config.residual``). Images of any size (padded to multiples of 8 inside, the output
    cropped back). ``labels`` (the clean images) give the official L1 loss.

    Returns ``ImageSuperResolutionOutput`` with ``reconstruction`` [B, out_channels, H, W]."""

    def __init__(self, config):
        super().__init__(config)
        self.restore_rwkv = RestoreRwkvModel(config)
        self.output = nn.Conv2d(config.level_width(2), config.out_channels, 3, padding=1)
        self.post_init()

    def forward(self, pixel_values=None, labels=None, output_hidden_states=None, return_dict=None, **kwargs):
        output_hidden_states = output_hidden_states if output_hidden_states is not None \
            else self.config.output_hidden_states
        trunk = self.restore_rwkv
        trunk.check_pixels(pixel_values)
        h, w = pixel_values.shape[-2:]
        padded = pad_to_multiple(pixel_values.to(self.output.weight.dtype))
        x, stages = trunk.features(padded, collect=output_hidden_states)
        x = self.output(x)
        if self.config.residual:
            x = x + padded
        reconstruction = x[..., :h, :w]
        loss = None
        if labels is not None:
            if labels.shape != reconstruction.shape:
                raise ValueError(f"labels must have the reconstruction's shape {tuple(reconstruction.shape)}, "
                                 f"got {tuple(labels.shape)}")
            loss = F.l1_loss(reconstruction, labels.to(reconstruction.dtype))
        return ImageSuperResolutionOutput(loss=loss, reconstruction=reconstruction, hidden_states=stages)


RESTORE_RWKV_CLASSES = (RestoreRwkvConfig, RestoreRwkvModel, RestoreRwkvForImageRestoration)
