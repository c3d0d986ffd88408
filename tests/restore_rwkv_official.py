"""A straightforward re-implementation of the official Restore-RWKV forward (Yaziwel/Restore-RWKV
``model/Restore_RWKV.py``), written out from the paper's formulas and the official module
structure, in float64, for the tests: nothing here comes from rwkv_hf. The Bi-WKV is the naive
O(T^2) sum of ``vrwkv_official.naive_bi_wkv4`` (the official code calls its CUDA kernel with
``spatial_decay[j] / T`` and ``spatial_first[j] / T``, T = h*w tokens):

* Re-WKV (recurrence 2): ``v1 = BiWKV(w0/T, u0/T, k, v)`` over the row-major (h w) token order,
  then ``v2 = BiWKV(w1/T, u1/T, k', v1')`` over the column-major (w h) order, transposed back;
  the attention output is ``output(sigmoid(r) * v2)``, with r, k, v from one Omni-shifted x.
* Omni-shift: ``a0 x + a1 DW1x1(x) + a2 DW3x3(x) + a3 DW5x5(x)`` (training form), or one
  depthwise 5x5 conv whose kernel is the fold ``a0 I + a1 pad(w1) + a2 pad(w3) + a3 w5``
  (the official eval form). Which one runs is ``OmniShift.use_reparam`` (``set_reparam``).

The module and parameter names are the official ones, so ``OfficialRestoreRWKV.state_dict()``
has the key layout of the official ``torch.save(model.state_dict())`` checkpoints (including
``*.omni_shift.conv5x5_reparam.weight``).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from vrwkv_official import naive_bi_wkv4


def tokens_to_image(x, h, w):
    """[B, h*w, C] (row-major tokens) -> [B, C, h, w]."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def image_to_tokens(x):
    """[B, C, h, w] -> [B, h*w, C] (row-major tokens)."""
    return x.flatten(2).transpose(1, 2)


def rows_to_cols(x, h, w):
    """Token order (h w) -> (w h): the column-major scan."""
    return x.reshape(x.shape[0], h, w, x.shape[2]).transpose(1, 2).reshape(x.shape)


def cols_to_rows(x, h, w):
    """Token order (w h) -> (h w)."""
    return x.reshape(x.shape[0], w, h, x.shape[2]).transpose(1, 2).reshape(x.shape)


class OmniShift(nn.Module):
    """Depthwise 1x1 + 3x3 + 5x5 (+ identity) token shift, RepVGG style.

    ``use_reparam=False``: the training form (four weighted branches).
    ``use_reparam=True``: the eval form, one depthwise 5x5 conv with the folded kernel. The fold is
    recomputed from the branches on every such forward and also written into
    ``conv5x5_reparam.weight`` (as the official module does on its first eval forward), so a
    stale ``conv5x5_reparam.weight`` from a checkpoint never matters. Gradients of the eval form
    flow to the branch parameters, not to ``conv5x5_reparam.weight``.
    """

    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.conv1x1 = nn.Conv2d(dim, dim, 1, groups=dim, bias=False)
        self.conv3x3 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.conv5x5 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, bias=False)
        self.alpha = nn.Parameter(torch.randn(4))
        self.conv5x5_reparam = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, bias=False)
        self.use_reparam = False

    def folded_weight(self):
        """The [dim, 1, 5, 5] kernel equal to the four-branch training form."""
        a = self.alpha
        identity = torch.zeros_like(self.conv5x5.weight)
        identity[:, :, 2, 2] = 1
        return (a[0] * identity + a[1] * F.pad(self.conv1x1.weight, (2, 2, 2, 2))
                + a[2] * F.pad(self.conv3x3.weight, (1, 1, 1, 1)) + a[3] * self.conv5x5.weight)

    def forward(self, x):
        if not self.use_reparam:
            a = self.alpha
            return a[0] * x + a[1] * self.conv1x1(x) + a[2] * self.conv3x3(x) + a[3] * self.conv5x5(x)
        weight = self.folded_weight()
        with torch.no_grad():
            self.conv5x5_reparam.weight.copy_(weight)
        return F.conv2d(x, weight, padding=2, groups=self.dim)


def set_reparam(model, flag=True):
    """Switch every OmniShift in ``model`` to the folded eval form (True) or the training form."""
    for m in model.modules():
        if isinstance(m, OmniShift):
            m.use_reparam = bool(flag)
    return model


class VRWKV_SpatialMix(nn.Module):
    """Re-WKV: omni-shift, r/k/v projections, Bi-WKV row-major then column-major."""

    def __init__(self, n_embd):
        super().__init__()
        self.n_embd = n_embd
        self.recurrence = 2
        self.omni_shift = OmniShift(n_embd)
        self.key = nn.Linear(n_embd, n_embd, bias=False)
        self.value = nn.Linear(n_embd, n_embd, bias=False)
        self.receptance = nn.Linear(n_embd, n_embd, bias=False)
        self.output = nn.Linear(n_embd, n_embd, bias=False)
        self.spatial_decay = nn.Parameter(torch.randn(self.recurrence, n_embd))
        self.spatial_first = nn.Parameter(torch.randn(self.recurrence, n_embd))

    def forward(self, x, resolution):
        B, T, C = x.shape
        h, w = resolution
        x = image_to_tokens(self.omni_shift(tokens_to_image(x, h, w)))
        k, v = self.key(x), self.value(x)
        sr = torch.sigmoid(self.receptance(x))
        for j in range(self.recurrence):
            decay, first = self.spatial_decay[j] / T, self.spatial_first[j] / T
            if j % 2 == 0:
                v = naive_bi_wkv4(decay, first, k, v)
            else:
                v = naive_bi_wkv4(decay, first, rows_to_cols(k, h, w), rows_to_cols(v, h, w))
                v = cols_to_rows(v, h, w)
        return self.output(sr * v)


class VRWKV_ChannelMix(nn.Module):
    """omni-shift, then sigmoid(receptance(x)) * value(relu(key(x))^2), hidden size 4C."""

    def __init__(self, n_embd, hidden_rate=4):
        super().__init__()
        self.n_embd = n_embd
        hidden = int(hidden_rate * n_embd)
        self.key = nn.Linear(n_embd, hidden, bias=False)
        self.omni_shift = OmniShift(n_embd)
        self.receptance = nn.Linear(n_embd, n_embd, bias=False)
        self.value = nn.Linear(hidden, n_embd, bias=False)

    def forward(self, x, resolution):
        h, w = resolution
        x = image_to_tokens(self.omni_shift(tokens_to_image(x, h, w)))
        k = torch.square(torch.relu(self.key(x)))
        return torch.sigmoid(self.receptance(x)) * self.value(k)


class Block(nn.Module):
    """Pre-norm block on an image [B, C, h, w]: x + gamma1 att(ln1 x), then x + gamma2 ffn(ln2 x)."""

    def __init__(self, n_embd, hidden_rate=4):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.att = VRWKV_SpatialMix(n_embd)
        self.ffn = VRWKV_ChannelMix(n_embd, hidden_rate)
        self.gamma1 = nn.Parameter(torch.ones(n_embd))
        self.gamma2 = nn.Parameter(torch.ones(n_embd))

    def forward(self, x):
        h, w = x.shape[-2:]
        t = image_to_tokens(x)
        t = t + self.gamma1 * self.att(self.ln1(t), (h, w))
        t = t + self.gamma2 * self.ffn(self.ln2(t), (h, w))
        return tokens_to_image(t, h, w)


class Downsample(nn.Module):
    """C -> C/2 conv3x3, PixelUnshuffle(2): [B, C, H, W] -> [B, 2C, H/2, W/2]."""

    def __init__(self, n_feat):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x):
        return self.body(x)


class Upsample(nn.Module):
    """C -> 2C conv3x3, PixelShuffle(2): [B, C, H, W] -> [B, C/2, 2H, 2W]."""

    def __init__(self, n_feat):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x):
        return self.body(x)


class OfficialRestoreRWKV(nn.Module):
    """The official ``Restore_RWKV`` U-Net (without its loss). Image sides must be multiples of 8."""

    def __init__(self, inp_channels=1, out_channels=1, dim=48, num_blocks=(4, 6, 6, 8), num_refinement_blocks=4):
        super().__init__()

        def level(C, n):
            return nn.Sequential(*[Block(C) for _ in range(n)])

        self.patch_embed = nn.Conv2d(inp_channels, dim, 3, padding=1, bias=True)
        self.encoder_level1 = level(dim, num_blocks[0])
        self.down1_2 = Downsample(dim)
        self.encoder_level2 = level(dim * 2, num_blocks[1])
        self.down2_3 = Downsample(dim * 2)
        self.encoder_level3 = level(dim * 4, num_blocks[2])
        self.down3_4 = Downsample(dim * 4)
        self.latent = level(dim * 8, num_blocks[3])
        self.up4_3 = Upsample(dim * 8)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=True)
        self.decoder_level3 = level(dim * 4, num_blocks[2])
        self.up3_2 = Upsample(dim * 4)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=True)
        self.decoder_level2 = level(dim * 2, num_blocks[1])
        self.up2_1 = Upsample(dim * 2)  # no channel reduction at level 1: 2*dim from here on
        self.decoder_level1 = level(dim * 2, num_blocks[0])
        self.refinement = level(dim * 2, num_refinement_blocks)
        self.output = nn.Conv2d(dim * 2, out_channels, 3, padding=1, bias=True)

    def forward(self, inp_img):
        enc1 = self.encoder_level1(self.patch_embed(inp_img))
        enc2 = self.encoder_level2(self.down1_2(enc1))
        enc3 = self.encoder_level3(self.down2_3(enc2))
        lat = self.latent(self.down3_4(enc3))
        dec3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(lat), enc3], 1)))
        dec2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], 1)))
        dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2), enc1], 1))
        dec1 = self.refinement(dec1)
        return self.output(dec1) + inp_img  # global residual (broadcasts if a channel count is 1)


def randomize(model, seed=0):
    """Random weights in realistic ranges (norms and gammas away from 1/0, decays as randn)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            r = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if leaf in ("spatial_decay", "spatial_first", "alpha"):
                p.copy_(r)
            elif leaf.startswith("gamma") or (leaf == "weight" and p.dim() == 1):
                p.copy_(1 + 0.2 * r)
            elif leaf == "bias" and p.dim() == 1:
                p.copy_(0.1 * r)
            else:
                p.copy_(r / math.sqrt(p[0].numel()))
    return model
