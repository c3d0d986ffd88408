"""RWKV language models v4, v5.2, v6 and v7 as transformers models.

One block layout for every version (BlinkDL's): ``x = x + attn(ln1(x)); x = x + ffn(ln2(x))``,
``ln0`` after the embedding (block 0), ``head(ln_out(x))``. The versions differ only in
their time-mix (``attn``) and channel-mix (``ffn``) modules; the recurrences themselves
live in :mod:`rwkv_hf.ops` (models never loop over tokens). These modules are the definition
of the math; float32 CPU inference runs the same blocks through :mod:`rwkv_hf.lm.cpu_fused`
(one C call per block), which is tested against them.

Parameter names follow BlinkDL's checkpoints (``time_decay``, ``time_maa_w1``, ``x_r``,
``w1`` ...) so conversion is a rename of prefixes; vectors BlinkDL stores as ``[1, 1, C]``
are ``[C]`` here.

Recurrent state (``cache``, transformers' ``DynamicCache`` of linear-attention layers):
per layer, state 0 holds the time-mix token shift (a width-1 "conv" state ``[B, C, 1]``)
and the WKV state (``[B, 3, C]`` for v4, ``[B, H, N, N]`` key-major for v5-v7, fp32);
state 1 holds the channel-mix token shift. After ``generate`` the cache covers every
token except the last generated one (which was never fed back); to continue a
conversation pass the cache with the new tokens, starting with that last token.

Padding: positions where ``attention_mask`` is 0 have their mixer inputs zeroed (and,
for v4, their keys sent to -inf), which leaves every state exactly as if those tokens
were absent. This is exact for left padding (the generation setting) and for right
padding of the tokens before the pad; padding in the middle of a sequence is not
supported.
"""
import importlib
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput, logging

from .. import ops
from ..hub_mixin import RwkvHubMixin
from ..modeling_utils import V7_DECAY_SCALE, layer_ratios, ramp, sqrelu
from .configuration_rwkv_lm import RwkvV4Config, RwkvV5Config, RwkvV6Config, RwkvV7Config

# The fused CPU inference path of the package; remote-code copies of this file run the eager
# blocks (imported by name so that transformers' remote-code import scan does not look for it).
cpu_fused = importlib.import_module("rwkv_hf.lm.cpu_fused") if __name__ == "rwkv_hf.lm.modeling_rwkv_lm" else None

logger = logging.get_logger(__name__)

V4_MASKED_KEY = -1e30  # exp(k) of a padded v4 token is exactly 0 in fp32


def _token_shift(x, shift):
    """The previous token's x for every position; ``shift`` ([B, C] or None = zeros) is the
    token before the segment."""
    if shift is not None and x.shape[1] == 1:  # a generation step: no concatenation
        return shift.to(x.dtype).unsqueeze(1)
    first = torch.zeros_like(x[:, :1]) if shift is None else shift.to(x.dtype).unsqueeze(1)
    return torch.cat([first, x[:, :-1]], dim=1)


def _init_uniform(weight, scale):
    init.uniform_(weight, -scale, scale)


# --------------------------------------------------------------------------- time mix


class RwkvV4TimeMix(nn.Module):
    def __init__(self, config, layer_id):
        super().__init__()
        c = config.hidden_size
        self.layer_id, self.num_layers = layer_id, config.num_hidden_layers
        self.time_decay = nn.Parameter(torch.empty(c))
        self.time_first = nn.Parameter(torch.empty(c))
        self.time_mix_k = nn.Parameter(torch.empty(c))
        self.time_mix_v = nn.Parameter(torch.empty(c))
        self.time_mix_r = nn.Parameter(torch.empty(c))
        self.key = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(c, c, bias=False)
        self.receptance = nn.Linear(c, c, bias=False)
        self.output = nn.Linear(c, c, bias=False)

    def init_weights(self):
        c = self.time_decay.numel()
        r0to1, r1a0 = layer_ratios(self.layer_id, self.num_layers)
        n = torch.arange(c, dtype=torch.float32)
        init.copy_(self.time_decay, -5 + 8 * (n / max(c - 1, 1)) ** (0.7 + 1.3 * r0to1))
        init.copy_(self.time_first, math.log(0.3) + ((n + 1) % 3 - 1) * 0.5)
        x = ramp(c)
        init.copy_(self.time_mix_k, x ** r1a0)
        init.copy_(self.time_mix_v, x ** r1a0 + 0.3 * r0to1)
        init.copy_(self.time_mix_r, x ** (0.5 * r1a0))
        for lin in (self.key, self.value, self.receptance):
            _init_uniform(lin.weight, 0.5 / math.sqrt(c))
        init.zeros_(self.output.weight)

    def forward(self, x, shift, state, mask, v_first=None):
        prev = _token_shift(x, shift)
        # v4/v5 mixing x * m + prev * (1 - m), as one lerp
        k = self.key(torch.lerp(prev, x, self.time_mix_k))
        v = self.value(torch.lerp(prev, x, self.time_mix_v))
        r = self.receptance(torch.lerp(prev, x, self.time_mix_r))
        if mask is not None:  # zero inputs alone are not enough: exp(0) would count in the denominator
            k = k.masked_fill(~mask.unsqueeze(-1), max(V4_MASKED_KEY, torch.finfo(k.dtype).min))
        w = -torch.exp(self.time_decay.float())
        y, state = ops.wkv4(k, v.to(k.dtype), w, self.time_first.float(), state, output_final_state=True)
        return self.output(torch.sigmoid(r) * y.to(r.dtype)), x[:, -1], state, v_first


class _MatrixStateTimeMix(nn.Module):
    """What v5.2 and v6 share: r/k/v/gate projections, the WKV, GroupNorm ``ln_x`` and the
    SiLU gate."""

    def __init__(self, config, layer_id):
        super().__init__()
        c, h, n = config.hidden_size, config.num_heads, config.head_size
        self.layer_id, self.num_layers = layer_id, config.num_hidden_layers
        self.num_heads, self.head_size = h, n
        self.time_faaaa = nn.Parameter(torch.empty(h, n))
        self.receptance = nn.Linear(c, c, bias=False)
        self.key = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(c, c, bias=False)
        self.gate = nn.Linear(c, c, bias=False)
        self.output = nn.Linear(c, c, bias=False)
        self.ln_x = nn.GroupNorm(h, c, eps=config.group_norm_epsilon)

    def _init_common(self, decay):
        c = decay.numel()
        r0to1, _ = layer_ratios(self.layer_id, self.num_layers)
        n = torch.arange(c, dtype=torch.float32)
        bonus = r0to1 * (1 - n / max(c - 1, 1)) + ((n + 1) % 3 - 1) * 0.1
        init.copy_(self.time_faaaa, bonus.view(self.num_heads, self.head_size))
        for lin in (self.receptance, self.key, self.value, self.gate):
            _init_uniform(lin.weight, 0.5 / math.sqrt(c))
        init.zeros_(self.output.weight)
        init.ones_(self.ln_x.weight)
        init.zeros_(self.ln_x.bias)

    def _mix_out(self, r, k, v, w, g, state):
        b, t, c = r.shape
        heads = (b, t, self.num_heads, self.head_size)
        # One activation dtype for the op (under autocast the mixes come out fp32, the linears bf16).
        r, k, v = (z.to(r.dtype).view(heads) for z in (r, k, v))
        op = ops.wkv6 if w.dim() == 4 else ops.wkv5
        y, state = op(r, k, v, w, self.time_faaaa.float(), state, output_final_state=True)
        y = self.ln_x(y.reshape(b * t, c).to(r.dtype)).view(b, t, c)
        return self.output(y * F.silu(g)), state


class RwkvV5TimeMix(_MatrixStateTimeMix):
    def __init__(self, config, layer_id):
        super().__init__(config, layer_id)
        c = config.hidden_size
        self.time_decay = nn.Parameter(torch.empty(self.num_heads, self.head_size))
        self.time_mix_k = nn.Parameter(torch.empty(c))
        self.time_mix_v = nn.Parameter(torch.empty(c))
        self.time_mix_r = nn.Parameter(torch.empty(c))
        self.time_mix_g = nn.Parameter(torch.empty(c))

    def init_weights(self):
        c = self.time_mix_k.numel()
        r0to1, r1a0 = layer_ratios(self.layer_id, self.num_layers)
        n = torch.arange(c, dtype=torch.float32)
        decay = -6 + 5 * (n / max(c - 1, 1)) ** (0.7 + 1.3 * r0to1)
        init.copy_(self.time_decay, decay.view(self.num_heads, self.head_size))
        x = ramp(c)
        init.copy_(self.time_mix_k, x ** r1a0)
        init.copy_(self.time_mix_v, x ** r1a0 + 0.3 * r0to1)
        init.copy_(self.time_mix_r, x ** (0.5 * r1a0))
        init.copy_(self.time_mix_g, x ** (0.5 * r1a0))
        self._init_common(decay)

    def forward(self, x, shift, state, mask, v_first=None):
        prev = _token_shift(x, shift)

        r = self.receptance(torch.lerp(prev, x, self.time_mix_r))
        k = self.key(torch.lerp(prev, x, self.time_mix_k))
        v = self.value(torch.lerp(prev, x, self.time_mix_v))
        g = self.gate(torch.lerp(prev, x, self.time_mix_g))
        w = -torch.exp(self.time_decay.float())
        out, state = self._mix_out(r, k, v, w, g, state)
        return out, x[:, -1], state, v_first


class RwkvV6TimeMix(_MatrixStateTimeMix):
    def __init__(self, config, layer_id):
        super().__init__(config, layer_id)
        c, dm, dd = config.hidden_size, config.time_mix_extra_dim, config.time_decay_extra_dim
        for name in ("x", "w", "k", "v", "r", "g"):
            setattr(self, f"time_maa_{name}", nn.Parameter(torch.empty(c)))
        self.time_maa_w1 = nn.Parameter(torch.empty(c, 5 * dm))
        self.time_maa_w2 = nn.Parameter(torch.empty(5, dm, c))
        self.time_decay = nn.Parameter(torch.empty(c))
        self.time_decay_w1 = nn.Parameter(torch.empty(c, dd))
        self.time_decay_w2 = nn.Parameter(torch.empty(dd, c))

    def init_weights(self):
        c = self.time_decay.numel()
        r0to1, r1a0 = layer_ratios(self.layer_id, self.num_layers)
        x = ramp(c)
        for name, curve in (("x", x ** r1a0), ("w", x ** r1a0), ("k", x ** r1a0),
                            ("v", x ** r1a0 + 0.3 * r0to1), ("r", x ** (0.5 * r1a0)), ("g", x ** (0.5 * r1a0))):
            init.copy_(getattr(self, f"time_maa_{name}"), 1 - curve)
        init.zeros_(self.time_maa_w1)
        _init_uniform(self.time_maa_w2, 0.01)
        n = torch.arange(c, dtype=torch.float32)
        decay = -6 + 5 * (n / max(c - 1, 1)) ** (0.7 + 1.3 * r0to1)
        init.copy_(self.time_decay, decay)
        init.zeros_(self.time_decay_w1)
        _init_uniform(self.time_decay_w2, 0.01)
        self._init_common(decay)

    def forward(self, x, shift, state, mask, v_first=None):
        b, t, c = x.shape
        dx = _token_shift(x, shift) - x
        # Data-dependent token shift: five LoRA offsets, in BlinkDL's order w, k, v, r, g.
        lora = torch.tanh((x + dx * self.time_maa_x) @ self.time_maa_w1).view(b * t, 5, -1).transpose(0, 1)
        mw, mk, mv, mr, mg = torch.bmm(lora, self.time_maa_w2).view(5, b, t, c).unbind(0)
        xw = x + dx * (self.time_maa_w + mw)
        r = self.receptance(x + dx * (self.time_maa_r + mr))
        k = self.key(x + dx * (self.time_maa_k + mk))
        v = self.value(x + dx * (self.time_maa_v + mv))
        g = self.gate(x + dx * (self.time_maa_g + mg))
        # (time_decay_w1/w2 are fp32 in a bf16 model: the keep-in-fp32 list matches them too)
        w = self.time_decay + torch.tanh(xw @ self.time_decay_w1.to(xw.dtype)) @ self.time_decay_w2.to(xw.dtype)
        w = -torch.exp(w.float()).view(b, t, self.num_heads, self.head_size)
        out, state = self._mix_out(r, k, v, w, g, state)
        return out, x[:, -1], state, v_first


class RwkvV7TimeMix(nn.Module):
    def __init__(self, config, layer_id):
        super().__init__()
        c, h, n = config.hidden_size, config.num_heads, config.head_size
        self.layer_id, self.num_layers = layer_id, config.num_hidden_layers
        self.num_heads, self.head_size = h, n
        for name in ("r", "w", "k", "v", "a", "g"):
            setattr(self, f"x_{name}", nn.Parameter(torch.empty(c)))
        dw, da, dv, dg = (config.decay_low_rank_dim, config.a_low_rank_dim, config.value_low_rank_dim,
                          config.gate_low_rank_dim)
        self.w0, self.w1, self.w2 = nn.Parameter(torch.empty(c)), nn.Parameter(torch.empty(c, dw)), \
            nn.Parameter(torch.empty(dw, c))
        self.a0, self.a1, self.a2 = nn.Parameter(torch.empty(c)), nn.Parameter(torch.empty(c, da)), \
            nn.Parameter(torch.empty(da, c))
        if layer_id > 0:  # the value residual mixes in layer 0's value; layer 0 has nothing to mix
            self.v0, self.v1, self.v2 = nn.Parameter(torch.empty(c)), nn.Parameter(torch.empty(c, dv)), \
                nn.Parameter(torch.empty(dv, c))
        self.g1, self.g2 = nn.Parameter(torch.empty(c, dg)), nn.Parameter(torch.empty(dg, c))
        self.k_k = nn.Parameter(torch.empty(c))
        self.k_a = nn.Parameter(torch.empty(c))
        self.r_k = nn.Parameter(torch.empty(h, n))
        self.receptance = nn.Linear(c, c, bias=False)
        self.key = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(c, c, bias=False)
        self.output = nn.Linear(c, c, bias=False)
        self.ln_x = nn.GroupNorm(h, c, eps=config.group_norm_epsilon)

    def init_weights(self):
        c = self.x_r.numel()
        r0to1, r1a0 = layer_ratios(self.layer_id, self.num_layers)
        x = ramp(c)
        for name, power in (("r", 0.2), ("w", 0.9), ("k", 0.7), ("v", 0.7), ("a", 0.9), ("g", 0.2)):
            init.copy_(getattr(self, f"x_{name}"), 1 - x ** (power * r1a0))
        n = torch.arange(c, dtype=torch.float32)
        init.copy_(self.w0, -7 + 5 * (n / max(c - 1, 1)) ** (0.85 + r0to1 ** 0.5) + 0.5)
        loras = [(self.w1, self.w2), (self.a1, self.a2), (self.g1, self.g2)]
        if self.layer_id > 0:
            init.ones_(self.v0)
            loras.append((self.v1, self.v2))
        for down, up in loras:
            init.zeros_(down)
            init.orthogonal_(up, gain=0.1)
        init.zeros_(self.a0)
        init.constant_(self.k_k, 0.85)
        init.constant_(self.k_a, 1.0)
        init.constant_(self.r_k, -0.04)
        _init_uniform(self.receptance.weight, 0.5 / math.sqrt(c))
        _init_uniform(self.key.weight, 0.05 / math.sqrt(c))
        _init_uniform(self.value.weight, 0.5 / math.sqrt(c))
        init.zeros_(self.output.weight)
        init.constant_(self.ln_x.weight, ((1 + self.layer_id) / self.num_layers) ** 0.7)
        init.zeros_(self.ln_x.bias)

    def forward(self, x, shift, state, mask, v_first=None):
        b, t, c = x.shape
        heads = (b, t, self.num_heads, self.head_size)
        prev = _token_shift(x, shift)
        # x + (prev - x) * m, as one lerp each
        xr, xw, xk, xv, xa, xg = (torch.lerp(x, prev, m) for m in (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a,
                                                                    self.x_g))
        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        if torch.is_grad_enabled():
            w = V7_DECAY_SCALE * torch.sigmoid((self.w0 + torch.tanh(xw @ self.w1) @ self.w2).float())
            a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)  # in-context learning rate
            g = torch.sigmoid(xg @ self.g1) @ self.g2
        else:  # the same, in place on the fresh LoRA outputs (fewer big temporaries)
            w = (torch.tanh(xw @ self.w1) @ self.w2).add_(self.w0).float().sigmoid_().mul_(V7_DECAY_SCALE)
            a = ((xa @ self.a1) @ self.a2).add_(self.a0).sigmoid_()
            g = (xg @ self.g1).sigmoid_() @ self.g2
        kk = F.normalize((k * self.k_k).view(heads), dim=-1)
        k = k * torch.addcmul(1 - self.k_a, a, self.k_a)  # k * (1 + (a - 1) * k_a)
        if self.layer_id == 0:
            v_first = v
        else:  # v + (v_first - v) * sigmoid(.)
            v = torch.lerp(v, v_first, torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2).to(v.dtype))
        # One activation dtype for the op (under autocast the mixes come out fp32, the linears bf16).
        r_h, k_h, v_h, kk, a_h = (z.to(r.dtype).view(heads) for z in (r, k, v, kk, a))
        y, state = ops.wkv7(r_h, k_h, v_h, w.view(heads), -kk, kk * a_h, state, output_final_state=True)
        y = self.ln_x(y.reshape(b * t, c).to(r.dtype)).view(heads)
        bonus = (r.view(heads) * k.view(heads) * self.r_k).sum(-1, keepdim=True) * v.view(heads)
        return self.output((y + bonus).reshape(b, t, c) * g), x[:, -1], state, v_first


# --------------------------------------------------------------------------- channel mix


class RwkvV4ChannelMix(nn.Module):
    """v4 and v5.2: ``sigmoid(Wr xr) * Wv(relu(Wk xk)^2)`` with v4-style mixing
    ``x * m + prev * (1 - m)``."""

    mix_names = ("time_mix_k", "time_mix_r")

    def __init__(self, config, layer_id):
        super().__init__()
        c, f = config.hidden_size, config.intermediate_size
        self.layer_id, self.num_layers = layer_id, config.num_hidden_layers
        for name in self.mix_names:
            setattr(self, name, nn.Parameter(torch.empty(c)))
        self.key = nn.Linear(c, f, bias=False)
        self.receptance = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(f, c, bias=False)

    @staticmethod
    def _mix(x, prev, m):
        return torch.lerp(prev, x, m)

    @staticmethod
    def _mix_init(curve):
        return curve

    def init_weights(self):
        c = self.key.in_features
        _, r1a0 = layer_ratios(self.layer_id, self.num_layers)
        for name in self.mix_names:
            init.copy_(getattr(self, name), self._mix_init(ramp(c) ** r1a0))
        _init_uniform(self.key.weight, 0.5 / math.sqrt(c))
        init.zeros_(self.receptance.weight)
        init.zeros_(self.value.weight)

    def forward(self, x, shift):
        prev = _token_shift(x, shift)
        mk, mr = (getattr(self, name) for name in self.mix_names)
        k = sqrelu(self.key(self._mix(x, prev, mk)))
        r = torch.sigmoid(self.receptance(self._mix(x, prev, mr)))
        return r * self.value(k), x[:, -1]


class RwkvV6ChannelMix(RwkvV4ChannelMix):
    """v6: as v4's with the inverted mix ``x + (prev - x) * maa`` (initialised as 1 - v4's)."""

    mix_names = ("time_maa_k", "time_maa_r")

    @staticmethod
    def _mix(x, prev, m):
        return torch.lerp(x, prev, m)

    @staticmethod
    def _mix_init(curve):
        return 1 - curve


class RwkvV7ChannelMix(nn.Module):
    """v7: ``Wv(relu(Wk xk)^2)``, no receptance."""

    def __init__(self, config, layer_id):
        super().__init__()
        c, f = config.hidden_size, config.intermediate_size
        self.layer_id, self.num_layers = layer_id, config.num_hidden_layers
        self.x_k = nn.Parameter(torch.empty(c))
        self.key = nn.Linear(c, f, bias=False)
        self.value = nn.Linear(f, c, bias=False)

    def init_weights(self):
        c = self.x_k.numel()
        _, r1a0 = layer_ratios(self.layer_id, self.num_layers)
        init.copy_(self.x_k, 1 - ramp(c) ** (r1a0 ** 4))
        _init_uniform(self.key.weight, 0.5 / math.sqrt(c))
        init.zeros_(self.value.weight)

    def forward(self, x, shift):
        prev = _token_shift(x, shift)
        return self.value(sqrelu(self.key(torch.lerp(x, prev, self.x_k)))), x[:, -1]


_MIXERS = {
    4: (RwkvV4TimeMix, RwkvV4ChannelMix),
    5: (RwkvV5TimeMix, RwkvV4ChannelMix),
    6: (RwkvV6TimeMix, RwkvV6ChannelMix),
    7: (RwkvV7TimeMix, RwkvV7ChannelMix),
}


class RwkvLMBlock(GradientCheckpointingLayer):
    """``x + attn(ln1(x))`` then ``x + ffn(ln2(x))`` (block 0 first applies ``ln0``)."""

    def __init__(self, config, layer_id, version):
        super().__init__()
        c, eps = config.hidden_size, config.layer_norm_epsilon
        self.layer_id = layer_id
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(c, eps=eps)
        self.ln1 = nn.LayerNorm(c, eps=eps)
        self.ln2 = nn.LayerNorm(c, eps=eps)
        time_mix, channel_mix = _MIXERS[version]
        self.attn = time_mix(config, layer_id)
        self.ffn = channel_mix(config, layer_id)

    def forward(self, hidden, mask, att_shift, wkv_state, ffn_shift, v_first):
        if self.layer_id == 0:
            hidden = self.ln0(hidden)
        x = self.ln1(hidden)
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        out, att_shift, wkv_state, v_first = self.attn(x, att_shift, wkv_state, mask, v_first)
        hidden = hidden + out
        x = self.ln2(hidden)
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        out, ffn_shift = self.ffn(x, ffn_shift)
        return hidden + out, att_shift, wkv_state, ffn_shift, v_first


def write_layer_state(cache, layer, att_shift, wkv_state, ffn_shift):
    """Store one layer's state in a linear-attention ``DynamicCache``: state 0 = time-mix shift
    ([B, C], as a width-1 conv state) + WKV state, state 1 = channel-mix shift. The one place
    that knows the layout (``_read_cache`` reads it back)."""
    states = cache.layers[layer]
    if states.has_previous_state[0] and states.has_previous_state[1]:
        # A generation step: what update_conv_state does for a width-1 window (concatenate, keep
        # the last column, copy in place), as one copy each.
        states.conv_states[0].select(-1, 0).copy_(att_shift)
        states.conv_states[1].select(-1, 0).copy_(ffn_shift)
        states.recurrent_states[0].copy_(wkv_state)
        return
    cache.update_conv_state(att_shift.unsqueeze(-1), layer, 0, conv_kernel_size=1)
    cache.update_recurrent_state(wkv_state, layer, 0)
    cache.update_conv_state(ffn_shift.unsqueeze(-1), layer, 1, conv_kernel_size=1)


# --------------------------------------------------------------------------- outputs


@dataclass
class RwkvLMOutput(ModelOutput):
    """Base-model output: ``last_hidden_state`` [B, T, C]; ``cache`` the recurrent state after
    the input (when ``use_cache``); ``hidden_states`` per layer when asked."""

    last_hidden_state: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class RwkvLMCausalLMOutput(ModelOutput):
    """Causal-LM output: ``loss`` (when ``labels`` are given), ``logits``, ``cache``,
    ``hidden_states``."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class RwkvLMSequenceClassifierOutput(ModelOutput):
    """Sequence-classification output: ``loss``, ``logits`` [B, num_labels], ``cache``,
    ``hidden_states``."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


# --------------------------------------------------------------------------- models


class RwkvLMPreTrainedModel(RwkvHubMixin, PreTrainedModel):
    """Shared weight init, cache checks and transformers settings of the RWKV language models."""

    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["RwkvLMBlock"]
    # Decays sit in an exponent: kept fp32 when loading in bf16/fp16, as BlinkDL's runtime does.
    _keep_in_fp32_modules_strict = ["time_decay", "time_first", "time_faaaa"]
    _is_stateful = True
    rwkv_version = None

    @classmethod
    def _supports_default_dynamic_cache(cls):
        # The model builds its own recurrent cache; generate must not pass a KV cache.
        return False

    def _init_weights(self, module):
        if isinstance(module, (RwkvV4TimeMix, RwkvV5TimeMix, RwkvV6TimeMix, RwkvV7TimeMix,
                               RwkvV4ChannelMix, RwkvV6ChannelMix, RwkvV7ChannelMix)):
            module.init_weights()  # owns its linears (zero-initialised outputs, scaled inputs)
        elif isinstance(module, nn.Embedding):
            _init_uniform(module.weight, 1e-4)  # tiny: ln0 normalises it
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, RwkvLMForSequenceClassificationBase):
            init.normal_(module.score.weight, mean=0.0, std=0.5 / math.sqrt(self.config.hidden_size))
        elif isinstance(module, RwkvLMForCausalLMBase) and not getattr(self.config, "tie_word_embeddings", False):
            # logits of unit-variance features get a std of about 0.5
            init.normal_(module.head.weight, mean=0.0, std=0.5 / math.sqrt(self.config.hidden_size))

    hub_family = "lm"

    def hub_auto_classes(self):
        _, base, causal, seq = RWKV_LM_CLASSES[self.rwkv_version]
        return {"AutoModel": base, "AutoModelForCausalLM": causal, "AutoModelForSequenceClassification": seq}

    def save_companions(self, save_directory):
        """The tokenizer files when the vocabulary is one rwkv_hf knows (World 65536, GPT-NeoX
        50277) and the folder has none yet, so ``AutoTokenizer.from_pretrained(folder)`` works;
        any other vocabulary is saved without a tokenizer, and a log line says so."""
        try:
            from ..tokenization_rwkv_world import save_tokenizer_for_vocab_size
        except ImportError:  # remote code without rwkv_hf: no tokenizer files to add
            return
        names = ("tokenizer_config.json", "tokenizer.json")
        if not any(os.path.exists(os.path.join(save_directory, n)) for n in names):
            if not save_tokenizer_for_vocab_size(self.config.vocab_size, save_directory):
                logger.info(f"No tokenizer known for vocab_size={self.config.vocab_size}: saved the model "
                            "without tokenizer files (save yours with tokenizer.save_pretrained).")

    def expected_state_shapes(self, batch_size):
        """Shapes of one layer's cached tensors: time-mix shift, WKV state, channel-mix shift."""
        c = self.config.hidden_size
        if self.rwkv_version == 4:
            wkv = (batch_size, 3, c)
        else:
            n = self.config.head_size
            wkv = (batch_size, self.config.num_heads, n, n)
        return (batch_size, c, 1), wkv, (batch_size, c, 1)


class RwkvLMModelBase(RwkvLMPreTrainedModel):
    """Embedding, blocks and the final LayerNorm; returns hidden states and the recurrent
    state."""

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(
            [RwkvLMBlock(config, i, self.rwkv_version) for i in range(config.num_hidden_layers)])
        self.ln_out = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, new_embeddings):
        self.embeddings = new_embeddings

    def _check_inputs(self, input_ids, inputs_embeds, attention_mask):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        x = input_ids if input_ids is not None else inputs_embeds
        if x.dim() != (2 if input_ids is not None else 3) or x.shape[1] == 0:
            what = "input_ids [batch, seq_len]" if input_ids is not None else "inputs_embeds [batch, seq_len, hidden]"
            raise ValueError(f"Expected non-empty {what}, got shape {tuple(x.shape)}.")
        if input_ids is not None:
            if input_ids.dtype.is_floating_point:
                raise ValueError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}.")
            if torch.compiler.is_compiling():  # a traced graph cannot read values: an assert in it
                torch._assert_async(((input_ids >= 0) & (input_ids < self.config.vocab_size)).all(),
                                    f"a token id is outside the vocabulary [0, {self.config.vocab_size})")
            else:
                lo, hi = (int(x) for x in torch.aminmax(input_ids))
                if lo < 0 or hi >= self.config.vocab_size:
                    bad = lo if lo < 0 else hi
                    raise ValueError(f"Token id {bad} is outside the vocabulary [0, {self.config.vocab_size}).")
        elif inputs_embeds.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"inputs_embeds has hidden size {inputs_embeds.shape[-1]}, the model {self.config.hidden_size}.")
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(x.shape[:2]):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, the input {tuple(x.shape[:2])}.")

    def _read_cache(self, cache, batch_size):
        """Per-layer (att_shift, wkv_state, ffn_shift) from a cache, checked against this model."""
        if not isinstance(cache, Cache):
            raise ValueError(f"cache must be a transformers Cache (from this model's output), got {type(cache)}.")
        if len(cache.layers) != self.config.num_hidden_layers:
            raise ValueError(f"The cache has {len(cache.layers)} layers, this model "
                             f"{self.config.num_hidden_layers}: it belongs to another model.")
        states = []
        expected = self.expected_state_shapes(batch_size)
        for i, layer in enumerate(cache.layers):
            if getattr(layer, "number_of_states", 0) != 2 or not hasattr(layer, "has_previous_state"):
                raise ValueError(f"Layer {i} of the cache is not an RWKV state (linear-attention layer with 2 states).")
            if not layer.has_previous_state[0]:
                states.append((None, None, None))
                continue
            got = (layer.conv_states[0], layer.recurrent_states[0], layer.conv_states[1])
            for what, tensor, shape in zip(("time-mix shift", "WKV state", "channel-mix shift"), got, expected):
                if tensor is None or tuple(tensor.shape) != shape:
                    raise ValueError(
                        f"Cache layer {i}: {what} has shape {None if tensor is None else tuple(tensor.shape)}, "
                        f"this RWKV-{self.rwkv_version} model expects {shape} (a state of another version, size "
                        "or batch size?).")
            att, wkv, ffn = got
            if torch.is_grad_enabled():  # the cache is updated in place below; keep autograd's copies intact
                att, wkv, ffn = att.clone(), wkv.clone(), ffn.clone()
            states.append((att[..., -1], wkv, ffn[..., -1]))
        return states

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, cache=None, use_cache=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        """Run the blocks.

        Args:
            input_ids: [B, T] token ids (or ``inputs_embeds`` [B, T, C]).
            attention_mask: [B, T], 1 for real tokens and 0 for (left) padding.
            cache: the recurrent state to start from (a ``DynamicCache`` returned by an earlier
                call); it is updated in place and returned.
            use_cache: return the state after the input (default: the config's ``use_cache``
                outside training).
        """
        if "cache_params" in kwargs:  # transformers <5.24 and Mamba-style callers
            cache = kwargs.pop("cache_params") if cache is None else cache
        output_hidden_states = output_hidden_states if output_hidden_states is not None else \
            self.config.output_hidden_states
        self._check_inputs(input_ids, inputs_embeds, attention_mask)
        if use_cache is None:
            use_cache = getattr(self.config, "use_cache", True) and not self.training
        if self.gradient_checkpointing and self.training:
            use_cache = False  # checkpointed blocks are re-run; in-place cache updates would double-count
        hidden = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        batch_size = hidden.shape[0]

        mask = None
        # An all-ones mask is skipped (a host sync once per forward); a traced graph applies it.
        if attention_mask is not None and (torch.compiler.is_compiling() or not bool(attention_mask.all())):
            mask = attention_mask.bool()
        if cache is not None:
            states = self._read_cache(cache, batch_size)
        else:
            states = [(None, None, None)] * len(self.blocks)
            if use_cache:
                cache = DynamicCache(config=self.config)

        all_hidden = () if output_hidden_states else None
        v_first = None
        # float32 CPU inference runs each block as one fused C call (cpu_fused)
        fused = None
        if cpu_fused is not None and cpu_fused.usable(self.blocks, hidden):
            fused = cpu_fused.Runner(self.rwkv_version, self.config, *hidden.shape[:2], update_states=use_cache,
                                     mask=mask)
        for i, block in enumerate(self.blocks):
            if output_hidden_states:
                all_hidden += (hidden.clone() if fused else hidden,)  # the fused blocks update it in place
            att_shift, wkv_state, ffn_shift = states[i]
            if fused:
                hidden, att_shift, wkv_state, ffn_shift = fused.block(block, hidden, att_shift, wkv_state, ffn_shift)
            else:
                hidden, att_shift, wkv_state, ffn_shift, v_first = block(
                    hidden, mask, att_shift, wkv_state, ffn_shift, v_first)
            if use_cache:
                write_layer_state(cache, i, att_shift, wkv_state, ffn_shift)
        hidden = self.ln_out(hidden)
        if output_hidden_states:
            all_hidden += (hidden,)
        return RwkvLMOutput(last_hidden_state=hidden, cache=cache if use_cache else None,
                            hidden_states=all_hidden)


class RwkvLMForCausalLMBase(RwkvLMPreTrainedModel, GenerationMixin):
    """The base model plus the output head; ``labels`` give the shifted next-token loss."""

    _tied_weights_keys = {"head.weight": "model.embeddings.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.model = self.base_model_class(config)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        if self.generation_config is not None:  # written with the model: greedy, end-of-text id 0
            self.generation_config.do_sample = False
            if self.generation_config.eos_token_id is None:
                self.generation_config.eos_token_id = 0

    def get_output_embeddings(self):
        return self.head

    def set_output_embeddings(self, new_embeddings):
        self.head = new_embeddings

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, cache=None, attention_mask=None,
                                      inputs_embeds=None, is_first_iteration=False, use_cache=None, **kwargs):
        """Only the new tokens are fed once a state exists; the padding mask matters only
        for the prompt (every generated token is real)."""
        if "cache_params" in kwargs and cache is None:
            cache = kwargs.pop("cache_params")
        kwargs.pop("cache_params", None)
        inputs = {"use_cache": use_cache}
        if inputs_embeds is not None and is_first_iteration:
            inputs["inputs_embeds"] = inputs_embeds
        else:
            if next_sequence_length is not None:
                input_ids = input_ids[:, -next_sequence_length:]
            elif cache is not None and not is_first_iteration:
                input_ids = input_ids[:, -1:]
            inputs["input_ids"] = input_ids.contiguous()
        if cache is not None:
            inputs["cache"] = cache
        if attention_mask is not None and (is_first_iteration or cache is None):  # without a cache every
            # step re-reads the (left-padded) prompt
            inputs["attention_mask"] = attention_mask[:, -inputs.get("input_ids", inputs_embeds).shape[1]:]
        for key in ("logits_to_keep", "output_hidden_states", "return_dict"):
            if key in kwargs:
                inputs[key] = kwargs[key]
        return inputs

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, cache=None, labels=None,
                use_cache=None, output_hidden_states=None, return_dict=None, logits_to_keep=0, **kwargs):
        """Logits for the last ``logits_to_keep`` positions (0 = all) and, with ``labels``
        ([B, T], -100 = ignored), the mean next-token cross-entropy."""
        loss_kwargs = {k: kwargs.pop(k) for k in ("num_items_in_batch", "ignore_index") if k in kwargs}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                         cache=cache, use_cache=use_cache, output_hidden_states=output_hidden_states, **kwargs)
        hidden = out.last_hidden_state
        if isinstance(logits_to_keep, int):
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        else:
            hidden = hidden[:, logits_to_keep]
        logits = self.head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size,
                                      **loss_kwargs)
        return RwkvLMCausalLMOutput(loss=loss, logits=logits, cache=out.cache, hidden_states=out.hidden_states)


class RwkvLMForSequenceClassificationBase(RwkvLMPreTrainedModel):
    """Classifies from the hidden state of each sequence's last real token (the last
    position where ``attention_mask`` is 1, else the last position)."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = self.base_model_class(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, cache=None, labels=None,
                use_cache=None, output_hidden_states=None, return_dict=None, **kwargs):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                         cache=cache, use_cache=use_cache, output_hidden_states=output_hidden_states, **kwargs)
        hidden = out.last_hidden_state
        b, t = hidden.shape[:2]
        if attention_mask is None:
            last = torch.full((b,), t - 1, device=hidden.device)
        else:
            positions = torch.arange(t, device=hidden.device)
            last = (attention_mask.to(hidden.device).bool() * positions).max(dim=1).values
        logits = self.score(hidden[torch.arange(b, device=hidden.device), last])
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        return RwkvLMSequenceClassifierOutput(loss=loss, logits=logits, cache=out.cache,
                                              hidden_states=out.hidden_states)


# --------------------------------------------------------------------------- per-version classes
# Each version gets its own named classes: transformers maps config classes to model
# classes one to one, and the class names show up in saved configs ("architectures").


def _version_classes(version, config_class):
    name = f"RwkvV{version}"
    attrs = {"config_class": config_class, "rwkv_version": version, "__module__": __name__,
             "__annotations__": {"config": config_class}}
    pretrained = type(f"{name}PreTrainedModel", (RwkvLMPreTrainedModel,), dict(attrs))
    base = type(f"{name}Model", (RwkvLMModelBase, pretrained), dict(attrs))
    causal = type(f"{name}ForCausalLM", (RwkvLMForCausalLMBase, pretrained), dict(attrs, base_model_class=base))
    seq = type(f"{name}ForSequenceClassification", (RwkvLMForSequenceClassificationBase, pretrained),
               dict(attrs, base_model_class=base))
    for cls, doc in ((base, "base model"), (causal, "causal language model"),
                     (seq, "sequence classifier")):
        cls.__doc__ = f"RWKV-{version} {doc}. " + (cls.__mro__[1].__doc__ or "")
    return pretrained, base, causal, seq


(RwkvV4PreTrainedModel, RwkvV4Model, RwkvV4ForCausalLM,
 RwkvV4ForSequenceClassification) = _version_classes(4, RwkvV4Config)
(RwkvV5PreTrainedModel, RwkvV5Model, RwkvV5ForCausalLM,
 RwkvV5ForSequenceClassification) = _version_classes(5, RwkvV5Config)
(RwkvV6PreTrainedModel, RwkvV6Model, RwkvV6ForCausalLM,
 RwkvV6ForSequenceClassification) = _version_classes(6, RwkvV6Config)
(RwkvV7PreTrainedModel, RwkvV7Model, RwkvV7ForCausalLM,
 RwkvV7ForSequenceClassification) = _version_classes(7, RwkvV7Config)

RWKV_LM_CLASSES = {
    4: (RwkvV4Config, RwkvV4Model, RwkvV4ForCausalLM, RwkvV4ForSequenceClassification),
    5: (RwkvV5Config, RwkvV5Model, RwkvV5ForCausalLM, RwkvV5ForSequenceClassification),
    6: (RwkvV6Config, RwkvV6Model, RwkvV6ForCausalLM, RwkvV6ForSequenceClassification),
    7: (RwkvV7Config, RwkvV7Model, RwkvV7ForCausalLM, RwkvV7ForSequenceClassification),
}
