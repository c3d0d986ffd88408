"""A straightforward re-implementation of the official RWKV-CLIP forward (deepglint/RWKV-CLIP
``model/Image_rwkv.py``, ``model/Text_rwkv.py``, ``model/utils.py``, ``loss.py``, ``train.py``),
written out from the official module code and the RWKV-6 formulas, in float64, for the tests:
nothing here comes from rwkv_hf. The Bi-WKV is the naive O(T^2) sum of
``vrwkv_official.naive_bi_wkv6`` (the official kernels take ``ew = -exp(w)``, w = time_decay + lora):

``y_t = r_t^T (diag(u) k_t v_t^T + sum_{i!=t} prod_{j strictly between} diag(e^{-e^{w_j}}) k_i v_i^T)``

* Image tower: ``Image_RWKV`` = the Vision-RWKV-6 backbone (``vrwkv_official.Backbone``, heads>0,
  no cls token, final norm, head_dim = C // heads, ``hidden_rate`` x C channel mix).
* Text tower: ``Text_RWKV`` with the released configs' switches (dropout 0, pos_emb 0, head_qk 0,
  tiny_att_dim 0; those options are not implemented). Token shift is the bidirectional multi-head
  shift: per head, the first half of the channels come from token t-1, the second half from t+1.
* ``get_model`` with ``image_cls_token=False``: image embedding = global average pool of the last
  (final-normed) map; text embedding = mean over ALL positions (padding included) of the
  L2-normalised per-token features; ``forward`` returns ``(image, text, logit_scale.exp())``.
* ``clip_loss``: ``train.py`` + ``loss.ClipLoss`` on one process (both embeddings normalised).

The module and parameter names are the official ones, so ``OfficialRwkvClip.state_dict()`` has the
key layout of the released checkpoints (``image_model.*``, ``text_model.*``, ``logit_scale``).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

import vrwkv_official


def bidirectional_shift_multihead(x, head_dim, shift=1):
    """[B, T, C]: per head of ``head_dim`` channels, first half from t-shift, second half from t+shift."""
    B, T, C = x.shape
    half = head_dim // 2
    x = x.transpose(1, 2).reshape(B, -1, head_dim, T)
    out = torch.zeros_like(x)
    out[:, :, :half, shift:] = x[:, :, :half, :T - shift]
    out[:, :, half:, :T - shift] = x[:, :, half:, shift:]
    return out.reshape(B, C, T).transpose(1, 2)


class RWKV_Tmix_V6(vrwkv_official.SpatialMixV6):
    """The image tower's VRWKV6 spatial mix (the same official code) with the bidirectional 1-D
    shift and the GroupNorm epsilon ``1e-5 * head_size_divisor**2``."""

    def __init__(self, n_embd, head_size, head_size_divisor=8):
        super().__init__(n_embd, n_embd // head_size, key_norm=False, group_norm_eps=1e-5 * head_size_divisor ** 2)
        self.head_size = head_size

    def shift(self, x, res):
        return bidirectional_shift_multihead(x, self.head_size)

    def forward(self, x):
        return super().forward(x, None)


class RWKV_CMix_V6(nn.Module):
    def __init__(self, n_embd, dim_ffn, head_size):
        super().__init__()
        self.head_size = head_size
        self.time_maa_k = nn.Parameter(torch.zeros(1, 1, n_embd))
        self.time_maa_r = nn.Parameter(torch.zeros(1, 1, n_embd))
        self.key = nn.Linear(n_embd, dim_ffn, bias=False)
        self.receptance = nn.Linear(n_embd, n_embd, bias=False)
        self.value = nn.Linear(dim_ffn, n_embd, bias=False)

    def forward(self, x):
        xx = bidirectional_shift_multihead(x, self.head_size) - x
        xk = x + xx * self.time_maa_k
        xr = x + xx * self.time_maa_r
        return torch.sigmoid(self.receptance(xr)) * self.value(torch.relu(self.key(xk)) ** 2)


class Block(nn.Module):
    def __init__(self, layer_id, n_embd, dim_ffn, head_size, head_size_divisor=8):
        super().__init__()
        self.layer_id = layer_id
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(n_embd)
        self.att = RWKV_Tmix_V6(n_embd, head_size, head_size_divisor)
        self.ffn = RWKV_CMix_V6(n_embd, dim_ffn, head_size)

    def forward(self, x):
        if self.layer_id == 0:
            x = self.ln0(x)
        x = x + self.att(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class TextRWKV(nn.Module):
    """Official ``Text_RWKV``: ids [B, T] -> final-normed per-token features [B, T, n_embd]."""

    def __init__(self, vocab_size, n_embd, n_layer, dim_ffn, head_size, head_size_divisor=8):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, n_embd)
        self.blocks = nn.ModuleList(Block(i, n_embd, dim_ffn, head_size, head_size_divisor) for i in range(n_layer))
        self.ln_out = nn.LayerNorm(n_embd)

    def forward(self, idx):
        x = self.emb(idx)
        for block in self.blocks:
            x = block(x)
        return self.ln_out(x)


class OfficialRwkvClip(nn.Module):
    """Official ``get_model(Image_RWKV, Text_RWKV, image_cls_token=False)``. The defaults are the
    RWKV-CLIP-B/32 sizes (``model_config/RWKV_CLIP_B32.json``); tests pass small ones."""

    def __init__(self, C=640, depth=12, img_size=224, patch=32, heads=8, hidden_rate=5,
                 vocab_size=49408, n_embd=640, n_layer=6, dim_ffn=2240, head_size=64, head_size_divisor=8):
        super().__init__()
        self.text_model = TextRWKV(vocab_size, n_embd, n_layer, dim_ffn, head_size, head_size_divisor)
        self.image_model = vrwkv_official.Backbone(C, depth, img_size, patch, post_norm=False, init_values=None,
                                                   key_norm=False, heads=heads, hidden_rate=hidden_rate)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def encode_image(self, pixels):
        return self.image_model(pixels)[-1].mean((2, 3))

    def encode_text(self, ids):
        return F.normalize(self.text_model(ids), dim=-1).mean(1)

    def forward(self, image, text):
        return self.encode_image(image), self.encode_text(text), self.logit_scale.exp()

    def clip_loss(self, image, text):
        img, txt, scale = self(image, text)
        img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
        labels = torch.arange(img.shape[0])
        return (F.cross_entropy(scale * img @ txt.T, labels) + F.cross_entropy(scale * txt @ img.T, labels)) / 2


def randomize(model, seed=0):
    """``vrwkv_official.randomize`` (decays in [-6, -1], mixes in [0, 1], norms near 1, the rest
    ~ randn / sqrt(fan_in), incl. ``emb.weight`` and ``time_faaaa``), then a logit scale near ln(1/0.07)."""
    vrwkv_official.randomize(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1 / 0.07) + 0.5 * float(torch.randn((), generator=g, dtype=torch.float64)))
    return model
