"""A straightforward re-implementation of the official Vision-RWKV forward (OpenGVLab/Vision-RWKV
``vrwkv.py`` / ``vrwkv6.py`` / InternImage ``VRWKV_Classification``), written out from the
papers' formulas and the official module code, in float64, for the tests: nothing here comes
from rwkv_hf. The Bi-WKVs are the naive O(T^2) sums of the documented formulas (no scans):

* v4: ``wkv_t = (sum_{i!=t} e^{-(|t-i|-1) w/T + k_i} v_i + e^{u/T + k_t} v_t) / (same without v)``
* v6: ``y_t = r_t^T (diag(u) k_t v_t^T + sum_{i!=t} prod_{j strictly between} diag(e^{-e^{w_j}}) k_i v_i^T)``

The module and parameter names are the official ones, so ``OfficialClassifier.state_dict()``
has the key layout of the released mmcls checkpoints (``backbone.*``, ``head.fc.*``; the
L model's ``head.0.*`` / ``head.2.*``).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def naive_bi_wkv4(w, u, k, v):
    """w, u: [C] (already divided by T), k, v: [B, T, C]."""
    B, T, C = k.shape
    idx = torch.arange(T, dtype=k.dtype)
    dist = (idx[:, None] - idx[None, :]).abs() - 1  # [t, i]
    out = torch.empty_like(v)
    for b in range(B):
        logits = -dist[:, :, None] * w + k[b][None, :, :]  # [t, i, C]
        diag = torch.arange(T)
        logits[diag, diag] = u + k[b]
        m = logits.max(1, keepdim=True).values
        e = torch.exp(logits - m)
        out[b] = (e * v[b][None]).sum(1) / e.sum(1)
    return out


def naive_bi_wkv6(r, k, v, w, u):
    """r, k, v, w (raw time_decay + lora): [B, T, H, N]; u: [H, N]."""
    B, T, H, N = r.shape
    logdecay = -torch.exp(w)
    cum = torch.cumsum(logdecay, 1)  # L_t = sum_{j<=t}
    out = torch.zeros_like(v)
    t_idx = torch.arange(T)
    for b in range(B):
        for h in range(H):
            L = cum[b, :, h]  # [T, N]
            # i < t: prod_{j=i+1}^{t-1} = exp(L_{t-1} - L_i); i > t: prod_{j=t+1}^{i-1} = exp(L_{i-1} - L_t)
            Lprev = torch.cat([torch.zeros(1, N, dtype=L.dtype), L[:-1]], 0)  # L_{t-1}
            past = Lprev[:, None, :] - L[None, :, :]  # [t, i, N]
            future = Lprev[None, :, :] - L[:, None, :]  # [t, i, N] = L_{i-1} - L_t
            below = t_idx[None, :] < t_idx[:, None]
            expo = torch.where(below[:, :, None], past, future)
            eye = (t_idx[:, None] == t_idx[None, :])[:, :, None]
            A = torch.where(eye, u[h].view(1, 1, N), torch.exp(torch.where(eye, torch.zeros_like(expo), expo)))
            att = torch.einsum("tn,tin,in->ti", r[b, :, h], A, k[b, :, h])
            out[b, :, h] = att @ v[b, :, h]
    return out


def q_shift(x, shift_pixel, gamma, resolution):
    B, N, C = x.shape
    x = x.transpose(1, 2).reshape(B, C, *resolution)
    H, W = resolution
    s = shift_pixel
    out = torch.zeros_like(x)
    a, b, c, d = int(C * gamma), int(C * gamma * 2), int(C * gamma * 3), int(C * gamma * 4)
    out[:, 0:a, :, s:W] = x[:, 0:a, :, 0:W - s]
    out[:, a:b, :, 0:W - s] = x[:, a:b, :, s:W]
    out[:, b:c, s:H, :] = x[:, b:c, 0:H - s, :]
    out[:, c:d, 0:H - s, :] = x[:, c:d, s:H, :]
    out[:, d:] = x[:, d:]
    return out.flatten(2).transpose(1, 2)


def q_shift_multihead(x, shift_pixel, resolution, head_dim=64):
    B, N, C = x.shape
    x = x.transpose(1, 2).reshape(B, -1, head_dim, *resolution)
    H, W = resolution
    s, q = shift_pixel, head_dim // 4
    out = torch.zeros_like(x)
    out[:, :, 0:q, :, s:W] = x[:, :, 0:q, :, 0:W - s]
    out[:, :, q:2 * q, :, 0:W - s] = x[:, :, q:2 * q, :, s:W]
    out[:, :, 2 * q:3 * q, s:H, :] = x[:, :, 2 * q:3 * q, 0:H - s, :]
    out[:, :, 3 * q:4 * q, 0:H - s, :] = x[:, :, 3 * q:4 * q, s:H, :]
    return out.reshape(B, C, N).transpose(1, 2)


class SpatialMix(nn.Module):
    def __init__(self, C, key_norm):
        super().__init__()
        self.spatial_decay = nn.Parameter(torch.zeros(C))
        self.spatial_first = nn.Parameter(torch.zeros(C))
        self.spatial_mix_k = nn.Parameter(torch.zeros(1, 1, C))
        self.spatial_mix_v = nn.Parameter(torch.zeros(1, 1, C))
        self.spatial_mix_r = nn.Parameter(torch.zeros(1, 1, C))
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.key_norm = nn.LayerNorm(C) if key_norm else None
        self.output = nn.Linear(C, C, bias=False)

    def forward(self, x, res):
        B, T, C = x.shape
        xx = q_shift(x, 1, 0.25, res)
        xk = x * self.spatial_mix_k + xx * (1 - self.spatial_mix_k)
        xv = x * self.spatial_mix_v + xx * (1 - self.spatial_mix_v)
        xr = x * self.spatial_mix_r + xx * (1 - self.spatial_mix_r)
        k, v, sr = self.key(xk), self.value(xv), torch.sigmoid(self.receptance(xr))
        x = naive_bi_wkv4(self.spatial_decay / T, self.spatial_first / T, k, v)
        if self.key_norm is not None:
            x = self.key_norm(x)
        return self.output(sr * x)


class SpatialMixV6(nn.Module):
    def __init__(self, C, H, key_norm, group_norm_eps=1e-5):
        super().__init__()
        self.H = H
        for n in "xwkvrg":
            setattr(self, f"time_maa_{n}", nn.Parameter(torch.zeros(1, 1, C)))
        self.time_maa_w1 = nn.Parameter(torch.zeros(C, 32 * 5))
        self.time_maa_w2 = nn.Parameter(torch.zeros(5, 32, C))
        self.time_decay = nn.Parameter(torch.zeros(1, 1, C))
        self.time_decay_w1 = nn.Parameter(torch.zeros(C, 64))
        self.time_decay_w2 = nn.Parameter(torch.zeros(64, C))
        self.time_faaaa = nn.Parameter(torch.zeros(H, C // H))
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.gate = nn.Linear(C, C, bias=False)
        self.key_norm = nn.LayerNorm(C) if key_norm else None
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=group_norm_eps)

    def shift(self, x, res):
        return q_shift_multihead(x, 1, res, x.shape[-1] // self.H)

    def forward(self, x, res):
        B, T, C = x.shape
        xx = self.shift(x, res) - x
        xxx = x + xx * self.time_maa_x
        xxx = torch.tanh(xxx @ self.time_maa_w1).view(B * T, 5, -1).transpose(0, 1)
        xxx = torch.bmm(xxx, self.time_maa_w2).view(5, B, T, -1)
        mw, mk, mv, mr, mg = xxx.unbind(dim=0)
        xw = x + xx * (self.time_maa_w + mw)
        xk = x + xx * (self.time_maa_k + mk)
        xv = x + xx * (self.time_maa_v + mv)
        xr = x + xx * (self.time_maa_r + mr)
        xg = x + xx * (self.time_maa_g + mg)
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        g = F.silu(self.gate(xg))
        w = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2
        shp = (B, T, self.H, C // self.H)
        x = naive_bi_wkv6(r.view(shp), k.view(shp), v.view(shp), w.view(shp), self.time_faaaa).reshape(B, T, C)
        if self.key_norm is not None:
            x = self.key_norm(x)
        x = self.ln_x(x.view(B * T, C)).view(B, T, C)
        return self.output(x * g)


class ChannelMix(nn.Module):
    def __init__(self, C, key_norm, v6, head_dim=64, hidden_rate=4):
        super().__init__()
        self.v6, self.head_dim = v6, head_dim
        self.spatial_mix_k = nn.Parameter(torch.zeros(1, 1, C))
        self.spatial_mix_r = nn.Parameter(torch.zeros(1, 1, C))
        self.key = nn.Linear(C, hidden_rate * C, bias=False)
        self.key_norm = nn.LayerNorm(hidden_rate * C) if key_norm else None
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(hidden_rate * C, C, bias=False)

    def forward(self, x, res):
        xx = q_shift_multihead(x, 1, res, self.head_dim) if self.v6 else q_shift(x, 1, 0.25, res)
        xk = x * self.spatial_mix_k + xx * (1 - self.spatial_mix_k)
        xr = x * self.spatial_mix_r + xx * (1 - self.spatial_mix_r)
        k = torch.square(torch.relu(self.key(xk)))
        if self.key_norm is not None:
            k = self.key_norm(k)
        return torch.sigmoid(self.receptance(xr)) * self.value(k)


class Block(nn.Module):
    def __init__(self, C, layer_id, post_norm, init_values, key_norm, heads, hidden_rate=4):
        super().__init__()
        self.layer_id, self.post_norm = layer_id, post_norm
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C)
        self.att = SpatialMixV6(C, heads, key_norm) if heads else SpatialMix(C, key_norm)
        self.ffn = ChannelMix(C, key_norm, v6=bool(heads), head_dim=C // heads if heads else 64,
                              hidden_rate=hidden_rate)
        self.layer_scale = init_values is not None
        if self.layer_scale:
            self.gamma1 = nn.Parameter(init_values * torch.ones(C))
            self.gamma2 = nn.Parameter(init_values * torch.ones(C))

    def forward(self, x, res):
        if self.layer_id == 0:
            x = self.ln0(x)
        g1 = self.gamma1 if self.layer_scale else 1
        g2 = self.gamma2 if self.layer_scale else 1
        if self.post_norm:
            x = x + g1 * self.ln1(self.att(x, res))
            x = x + g2 * self.ln2(self.ffn(x, res))
        else:
            x = x + g1 * self.att(self.ln1(x), res)
            x = x + g2 * self.ffn(self.ln2(x), res)
        return x


class PatchEmbed(nn.Module):
    def __init__(self, C, patch):
        super().__init__()
        self.patch = patch
        self.projection = nn.Conv2d(3, C, patch, patch)

    def forward(self, x):
        H, W = x.shape[-2:]
        p = self.patch
        x = F.pad(x, [0, math.ceil(W / p) * p - W, 0, math.ceil(H / p) * p - H])  # mmcv 'corner'
        x = self.projection(x)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


class Backbone(nn.Module):
    def __init__(self, C, depth, img_size, patch, post_norm, init_values, key_norm, heads=0, out_indices=(-1,),
                 hidden_rate=4):
        super().__init__()
        self.patch_embed = PatchEmbed(C, patch)
        self.grid = (img_size // patch, img_size // patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], C))
        self.layers = nn.ModuleList(Block(C, i, post_norm, init_values, key_norm, heads, hidden_rate)
                                    for i in range(depth))
        self.ln1 = nn.LayerNorm(C)
        self.out_indices = [i % depth for i in out_indices]

    def forward(self, img):
        x, res = self.patch_embed(img)
        pos = self.pos_embed
        if res != self.grid:  # mmcls resize_pos_embed, no extra tokens
            pos = pos.reshape(1, *self.grid, -1).permute(0, 3, 1, 2)
            pos = F.interpolate(pos, size=res, align_corners=False, mode="bicubic").flatten(2).transpose(1, 2)
        x = x + pos
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x, res)
            if i == len(self.layers) - 1:
                x = self.ln1(x)
            if i in self.out_indices:
                outs.append(x.reshape(x.shape[0], *res, -1).permute(0, 3, 1, 2))
        return tuple(outs)


class Classifier(nn.Module):
    """mmcls ImageClassifier(backbone, GlobalAveragePooling, LinearClsHead) or InternImage's
    VRWKV_Classification (MLP head when ``hidden_dims``)."""

    def __init__(self, num_classes, hidden_dims=None, **backbone):
        super().__init__()
        self.backbone = Backbone(**backbone)
        C = backbone["C"]
        if hidden_dims:
            self.head = nn.Sequential(nn.Linear(C, hidden_dims), nn.Tanh(), nn.Linear(hidden_dims, num_classes))
        else:
            self.head = nn.Module()
            self.head.fc = nn.Linear(C, num_classes)

    def forward(self, img):
        feat = self.backbone(img)[-1].mean((2, 3))
        return self.head(feat) if isinstance(self.head, nn.Sequential) else self.head.fc(feat)


def randomize(model, seed=0):
    """Random weights in realistic ranges (decays spread over the fancy-init range)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("spatial_decay",):
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) * 8 - 5)
            elif leaf == "time_decay":
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) * 5 - 6)
            elif "mix" in leaf or "maa" in leaf and p.dim() == 3 and p.shape[0] == 1:
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype))
            elif leaf in ("weight",) and p.dim() == 1:  # norms
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            elif leaf.startswith("gamma"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g, dtype=p.dtype))
            else:
                fan_in = p.shape[-1] if p.dim() > 1 else 4
                if p.dim() == 4:
                    fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / math.sqrt(fan_in))
    return model
