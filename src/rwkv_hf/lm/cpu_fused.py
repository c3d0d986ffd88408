"""The fused CPU inference path of the RWKV language models (float32, no gradients).

The blocks' math is written once, in ``modeling_rwkv_lm.py``; on CPU that eager form spends a
third of a 512-token prefill and half of a generation step's non-matmul time in 20 to 30
elementwise ops per block. This module runs the same math with those ops fused into a few C++
passes (``cuda_ext/lm_cpu.cpp``, compiled into the operator layer's CPU library), the matmuls on
torch (MKL) and the recurrences on :mod:`rwkv_hf.ops`, so every fused block is checked against
the eager one (``tests/test_lm_fused.py``).

It runs only where it computes exactly what the eager path would: float32 CPU tensors, gradients
off, no padding mask, every projection a plain ``nn.Linear`` and no hooks on the blocks (so
PEFT-wrapped, quantised or hooked models take the eager path), and the compiled library
available. ``RWKV_HF_LM_FUSED=0`` turns it off.
"""
import ctypes
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module

from .. import ops
from ..ops import cpu_backend

__all__ = ["ENV", "usable", "block_forward"]

ENV = "RWKV_HF_LM_FUSED"
V7_DECAY_SCALE = -0.6065306597126334  # -exp(-0.5), as modeling_rwkv_lm

_lib = None  # the declared library, or False once it failed to load


def _load():
    global _lib
    if _lib is None:
        try:
            lib = cpu_backend.load()
        except RuntimeError:  # no compiler: the operator layer already said so once
            _lib = False
            return None
        i64, i32, f32, p = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
        lib.rwkv_hf_lm_ln_shift_mix.argtypes = [i64] * 3 + [p] * 4 + [f32] + [p] * 3 + [i64, p, i32, p, p, i32]
        lib.rwkv_hf_lm_v6_mix.argtypes = [i64] * 3 + [p] * 4 + [i32]
        lib.rwkv_hf_lm_neg_exp_bias.argtypes = [i64] * 2 + [p] * 2 + [i32]
        lib.rwkv_hf_lm_v7_pre.argtypes = [i64] * 3 + [f32] + [p] * 12 + [i32]
        lib.rwkv_hf_lm_group_norm_gate.argtypes = [i64] * 3 + [p] * 3 + [f32] + [p] * 5 + [i32]
        lib.rwkv_hf_lm_sigmoid_gate.argtypes = [i64] + [p] * 3 + [i32] * 2
        lib.rwkv_hf_lm_sqrelu.argtypes = [i64, p, i32]
        _lib = lib
    return _lib or None


def _p(x):
    return None if x is None else ctypes.c_void_p(x.data_ptr())


_PLAIN_TORCH = (nn.ModuleList, nn.Linear, nn.LayerNorm, nn.GroupNorm)
_MODELING = "rwkv_hf.lm.modeling_rwkv_lm"


def _plain(module):
    """Whether ``module`` and everything under it is what the fused path reads: the modeling
    file's own modules and plain torch Linear / LayerNorm / GroupNorm, without hooks (nor
    accelerate's ``_hf_hook``), every parameter a contiguous float32 CPU tensor. A PEFT or
    quantised wrapper is another type, so it sends the call to the eager path."""
    stack = [module]
    while stack:
        m = stack.pop()
        if not (type(m) in _PLAIN_TORCH or type(m).__module__ == _MODELING):
            return False
        if (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or "_hf_hook" in m.__dict__):
            return False
        for p in m._parameters.values():
            if p is not None and (p.dtype is not torch.float32 or not p.is_cpu or not p.is_contiguous()):
                return False
        stack.extend(m._modules.values())
    return True


def usable(blocks, hidden, mask):
    """Whether the fused path computes these blocks exactly as their eager forward would."""
    if os.environ.get(ENV, "1") == "0" or torch.is_grad_enabled() or mask is not None:
        return False
    if hidden.device.type != "cpu" or hidden.dtype != torch.float32:
        return False
    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return False
    return _plain(blocks) and _load() is not None


def _threads():
    return torch.get_num_threads()


def _ln_shift_mix(norm, h, shift, mus, form, with_dx=False):
    """LayerNorm ``norm`` of h [B, T, C], then the token-shift mixes with ``mus`` [n, C].
    Returns (mixes [n, B*T, C], xn, dx or None, the new shift [B, C])."""
    B, T, C = h.shape
    rows = B * T
    xn = torch.empty(rows, C)
    mix = torch.empty(len(mus), rows, C)
    dx = torch.empty(rows, C) if with_dx else None
    new_shift = torch.empty(B, C)
    shift = None if shift is None else shift.contiguous()
    _lib.rwkv_hf_lm_ln_shift_mix(B, T, C, _p(h), None, _p(norm.weight), _p(norm.bias), norm.eps, _p(xn), _p(shift),
                                 _p(new_shift), len(mus), _ptrs(mus), form, _p(mix), _p(dx), _threads())
    return mix, xn, dx, new_shift


def _ptrs(tensors):
    """A C array of the tensors' data pointers (parameters, read in place: no stacking)."""
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


def _wkv(op, *args, state):
    """The recurrence, from the operator layer. Generation steps (a state given, no backend
    forced) call its cpu kernels directly: their inputs are built here, float32 and shaped as
    the kernels take them, so the dispatcher's checks would pass, and they cost about 40 us a
    call (a sixth of a step's work outside the matmuls)."""
    if state is not None and os.environ.get(ops.BACKEND_ENV) in (None, "cpu"):
        return getattr(cpu_backend, op)(*args, state)
    return getattr(ops, op)(*args, state, output_final_state=True)


def _linear(x, module):
    return F.linear(x, module.weight)


def _group_norm_gate(att, y, g, bonus=None):
    """y [B, T, H, N] -> GroupNorm ``ln_x``, then the v7 bonus and gate or the v5/v6 SiLU gate;
    returns [rows, C]."""
    rows = y.shape[0] * y.shape[1]
    y = y.reshape(rows, -1).contiguous()
    r, k, v, r_k = bonus if bonus is not None else (None,) * 4
    _lib.rwkv_hf_lm_group_norm_gate(rows, att.num_heads, att.head_size, _p(y), _p(att.ln_x.weight),
                                    _p(att.ln_x.bias), att.ln_x.eps, _p(g), _p(r), _p(k), _p(v), _p(r_k),
                                    _threads())
    return y


def _sigmoid_gate(r, v, out, accumulate):
    _lib.rwkv_hf_lm_sigmoid_gate(out.numel(), _p(r), _p(v), _p(out), int(accumulate), _threads())


# ---------------------------------------------------------------------------- time mix

def _v4_att(att, blk, h2, shift, state, heads):
    B, T = heads[:2]
    (xk, xv, xr), _, _, new_shift = _ln_shift_mix(blk.ln1, h2.view(B, T, -1), shift,
                                                  (att.time_mix_k, att.time_mix_v, att.time_mix_r), 1)
    k, v, r = _linear(xk, att.key), _linear(xv, att.value), _linear(xr, att.receptance)
    w = -torch.exp(att.time_decay)
    y, state = _wkv("wkv4", k.view(B, T, -1), v.view(B, T, -1), w, att.time_first, state=state)
    y = y.reshape(B * T, -1).contiguous()
    _sigmoid_gate(r, y, y, accumulate=False)
    return y, new_shift, state


def _v5_att(att, blk, h2, shift, state, heads):
    B, T = heads[:2]
    (xr, xk, xv, xg), _, _, new_shift = _ln_shift_mix(
        blk.ln1, h2.view(B, T, -1), shift, (att.time_mix_r, att.time_mix_k, att.time_mix_v, att.time_mix_g), 1)
    r, k, v, g = (_linear(z, lin) for z, lin in ((xr, att.receptance), (xk, att.key), (xv, att.value),
                                                  (xg, att.gate)))
    w = (-torch.exp(att.time_decay)).view(1, 1, *heads[2:]).expand(heads)  # wkv5 is wkv6 with this decay
    y, state = _wkv("wkv6", r.view(heads), k.view(heads), v.view(heads), w, att.time_faaaa, state=state)
    return _group_norm_gate(att, y, g), new_shift, state


def _v6_att(att, blk, h2, shift, state, heads):
    B, T = heads[:2]
    rows = B * T
    (xxx,), xn, dx, new_shift = _ln_shift_mix(blk.ln1, h2.view(B, T, -1), shift, (att.time_maa_x,), 0, with_dx=True)
    lora = (xxx @ att.time_maa_w1).tanh_().view(rows, 5, -1).transpose(0, 1)
    m = torch.bmm(lora, att.time_maa_w2)  # [5, rows, C]: the offsets, then (in place) the mixes
    maa = _ptrs((att.time_maa_w, att.time_maa_k, att.time_maa_v, att.time_maa_r, att.time_maa_g))
    _lib.rwkv_hf_lm_v6_mix(rows, m.shape[-1], 5, _p(xn), _p(dx), maa, _p(m), _threads())
    xw, xk, xv, xr, xg = m.unbind(0)
    r, k, v, g = (_linear(z, lin) for z, lin in ((xr, att.receptance), (xk, att.key), (xv, att.value),
                                                  (xg, att.gate)))
    w = (xw @ att.time_decay_w1).tanh_() @ att.time_decay_w2
    _lib.rwkv_hf_lm_neg_exp_bias(rows, w.shape[-1], _p(w), _p(att.time_decay), _threads())
    y, state = _wkv("wkv6", r.view(heads), k.view(heads), v.view(heads), w.view(heads), att.time_faaaa, state=state)
    return _group_norm_gate(att, y, g), new_shift, state


def _v7_att(att, blk, h2, shift, state, heads, v_first):
    B, T, H, N = heads
    rows = B * T
    (xr, xw, xk, xv, xa, xg), _, _, new_shift = _ln_shift_mix(
        blk.ln1, h2.view(B, T, -1), shift, (att.x_r, att.x_w, att.x_k, att.x_v, att.x_a, att.x_g), 0)
    r, k, v = _linear(xr, att.receptance), _linear(xk, att.key), _linear(xv, att.value)
    w = (xw @ att.w1).tanh_() @ att.w2
    a = (xa @ att.a1) @ att.a2
    g = (xg @ att.g1).sigmoid_() @ att.g2
    first = att.layer_id == 0
    vl = None if first else (xv @ att.v1) @ att.v2
    neg_kk = torch.empty(rows, H * N)
    _lib.rwkv_hf_lm_v7_pre(rows, H, N, V7_DECAY_SCALE, _p(w), _p(a), _p(k), _p(v), _p(vl),
                           _p(None if first else v_first), _p(neg_kk), _p(att.w0), _p(att.a0),
                           _p(None if first else att.v0), _p(att.k_k), _p(att.k_a), _threads())
    if first:
        v_first = v
    y, state = _wkv("wkv7", r.view(heads), k.view(heads), v.view(heads), w.view(heads), neg_kk.view(heads),
                    a.view(heads), state=state)
    return _group_norm_gate(att, y, g, bonus=(r, k, v, att.r_k)), new_shift, state, v_first


# ---------------------------------------------------------------------------- channel mix

def _ffn(blk, version, h2, shift, B, T):
    """The channel mix, added to h2 in place; returns the new shift."""
    ffn = blk.ffn
    if version == 7:
        (xk,), _, _, new_shift = _ln_shift_mix(blk.ln2, h2.view(B, T, -1), shift, (ffn.x_k,), 0)
    else:
        mus = [getattr(ffn, name) for name in ffn.mix_names]  # (k, r)
        (xk, xr), _, _, new_shift = _ln_shift_mix(blk.ln2, h2.view(B, T, -1), shift, mus, 0 if version == 6 else 1)
    k = _linear(xk, ffn.key)
    _lib.rwkv_hf_lm_sqrelu(k.numel(), _p(k), _threads())
    if version == 7:
        h2.addmm_(k, ffn.value.weight.t())
    else:
        _sigmoid_gate(_linear(xr, ffn.receptance), _linear(k, ffn.value), h2, accumulate=True)
    return new_shift


def block_forward(blk, version, hidden, att_shift, wkv_state, ffn_shift, v_first):
    """One block (``RwkvLMBlock``) on the fused path. ``hidden`` [B, T, C] is updated in place
    (callers keep copies they need) and returned with the new states, as the eager forward."""
    if blk.layer_id == 0:
        hidden = blk.ln0(hidden)  # a fresh tensor: the caller's embeddings stay untouched
    B, T, C = hidden.shape
    att = blk.attn
    heads = (B, T, getattr(att, "num_heads", 1), getattr(att, "head_size", C))
    h2 = hidden.view(B * T, C)
    if version == 7:
        y, att_shift, wkv_state, v_first = _v7_att(att, blk, h2, att_shift, wkv_state, heads, v_first)
    else:
        y, att_shift, wkv_state = {4: _v4_att, 5: _v5_att, 6: _v6_att}[version](
            att, blk, h2, att_shift, wkv_state, heads)
    h2.addmm_(y, att.output.weight.t())
    ffn_shift = _ffn(blk, version, h2, ffn_shift, B, T)
    return hidden, att_shift, wkv_state, ffn_shift, v_first
