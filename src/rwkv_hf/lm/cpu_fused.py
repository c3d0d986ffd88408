"""The fused CPU inference path of the RWKV language models (float32, no gradients).

The blocks' math is written once, in ``modeling_rwkv_lm.py``. On CPU that eager form is slow
around its matmuls rather than in them: a 512-token prefill spends a third of its time in 20 to
30 elementwise passes per block, and in a generation step (bound by reading the weights) every
small op after a matmul pays 20-40 us for caches the matmul evicted. So float32 CPU inference
runs each block as one C call (``cuda_ext/lm_cpu.cpp``, built into the operator layer's CPU
library): the matmuls on the BLAS torch links (its own exported ``sgemm_``), the recurrences on
the operator layer's CPU kernels, the rest in a few fused passes. ``tests/test_lm_fused.py``
checks it against the eager blocks, in float64, for every version.

It runs only where it computes what the eager path would: float32 CPU tensors, gradients off,
the blocks made of the modeling file's modules and plain ``nn.Linear`` / ``LayerNorm`` /
``GroupNorm`` without hooks (so PEFT-wrapped, quantised, parametrised or hooked models take the
eager path), every parameter a contiguous float32 CPU tensor, and the library built with a BLAS
found in torch. A padding mask is applied as the eager blocks apply it. ``RWKV_HF_LM_FUSED=0``
turns it off.
"""
import ctypes
import os

import torch

from ..fused_cpu import plain, ptr, ptr_array, scratch
from ..modeling_utils import V7_DECAY_SCALE
from ..ops import V4_EMPTY_LOGSCALE, cpu_backend

__all__ = ["ENV", "available", "usable", "Runner"]

ENV = "RWKV_HF_LM_FUSED"

_lib = None  # the declared library, or False once it (or torch's sgemm) was found missing
_why_not = None  # why not, then

def _load():
    global _lib, _why_not
    if _lib is None:
        _lib = False
        try:
            lib = cpu_backend.load_blas()
        except RuntimeError as e:  # no compiler (the operator layer says so once) or no BLAS symbol
            _why_not = str(e)
            return None
        i64, i32, f32, p = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
        lib.rwkv_hf_lm_scratch_floats.argtypes = [i32, ctypes.POINTER(i64)]
        lib.rwkv_hf_lm_scratch_floats.restype = i64
        lib.rwkv_hf_lm_block.argtypes = ([i32, ctypes.POINTER(i64), ctypes.POINTER(p), f32, f32] + [p] * 8
                                         + [i32, f32, p, i32, p])
        _lib = lib
    return _lib or None


def available():
    """(True, 'ok') if float32 CPU inference can run the fused blocks here (the library builds and
    torch's BLAS is found), else (False, why not)."""
    if os.environ.get(ENV, "1") == "0":
        return False, f"turned off by {ENV}=0"
    return (True, "ok") if _load() is not None else (False, _why_not)


def usable(blocks, hidden):
    """Whether the fused path computes these blocks exactly as their eager forward would (never
    under torch.compile, which traces the eager form)."""
    if os.environ.get(ENV, "1") == "0" or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    if hidden.device.type != "cpu" or hidden.dtype != torch.float32:
        return False
    return plain(blocks, "rwkv_hf.lm.modeling_rwkv_lm") and _load() is not None


# ---------------------------------------------------------------------------- parameters
# Each version's parameters in the order its block function in lm_cpu.cpp reads them.

def _ffn_params(blk):
    ffn = blk.ffn
    mk, mr = (getattr(ffn, name) for name in ffn.mix_names)
    return [blk.ln2.weight, blk.ln2.bias, mk, mr, ffn.key.weight, ffn.value.weight, ffn.receptance.weight]


def _v4_params(blk):
    att = blk.attn
    return [blk.ln1.weight, blk.ln1.bias, att.time_mix_k, att.time_mix_v, att.time_mix_r, att.key.weight,
            att.value.weight, att.receptance.weight, att.time_decay, att.time_first, att.output.weight,
            *_ffn_params(blk)]


def _v5_params(blk):
    att = blk.attn
    return [blk.ln1.weight, blk.ln1.bias, att.time_mix_r, att.time_mix_k, att.time_mix_v, att.time_mix_g,
            att.receptance.weight, att.key.weight, att.value.weight, att.gate.weight, att.time_decay,
            att.time_faaaa, att.ln_x.weight, att.ln_x.bias, att.output.weight, *_ffn_params(blk)]


def _v6_params(blk):
    att = blk.attn
    return [blk.ln1.weight, blk.ln1.bias, att.time_maa_x, att.time_maa_w1, att.time_maa_w2, att.time_maa_w,
            att.time_maa_k, att.time_maa_v, att.time_maa_r, att.time_maa_g, att.receptance.weight,
            att.key.weight, att.value.weight, att.gate.weight, att.time_decay, att.time_decay_w1,
            att.time_decay_w2, att.time_faaaa, att.ln_x.weight, att.ln_x.bias, att.output.weight,
            *_ffn_params(blk)]


def _v7_params(blk):
    att, ffn = blk.attn, blk.ffn
    first = att.layer_id == 0  # no value residual in layer 0
    return [blk.ln1.weight, blk.ln1.bias, att.x_r, att.x_w, att.x_k, att.x_v, att.x_a, att.x_g,
            att.receptance.weight, att.key.weight, att.value.weight, att.w0, att.w1, att.w2, att.a0, att.a1,
            att.a2, None if first else att.v0, None if first else att.v1, None if first else att.v2, att.g1,
            att.g2, att.k_k, att.k_a, att.r_k, att.ln_x.weight, att.ln_x.bias, att.output.weight,
            blk.ln2.weight, blk.ln2.bias, ffn.x_k, ffn.key.weight, ffn.value.weight]


_PARAMS = {4: _v4_params, 5: _v5_params, 6: _v6_params, 7: _v7_params}


def _low_rank_dims(version, config):
    if version == 6:
        return [config.time_mix_extra_dim, config.time_decay_extra_dim, 0, 0]
    if version == 7:
        return [config.decay_low_rank_dim, config.a_low_rank_dim, config.value_low_rank_dim,
                config.gate_low_rank_dim]
    return [0, 0, 0, 0]


class Runner:
    """The fused blocks of one forward call on hidden states of shape (batch, seq_len): the
    scratch memory they share (this thread's, reused from call to call) and RWKV-7's
    first-layer values."""

    def __init__(self, version, config, batch, seq_len, update_states=True, mask=None):
        self.version = version
        self.update_states = update_states  # False: states passed in are left as they are
        # [B, T] padding mask (True/1 for real tokens) as the float32 rows the kernels read
        self.mask = None if mask is None else mask.to(torch.float32).contiguous()
        c = config.hidden_size
        n = config.head_size if version != 4 else c
        dims = [batch, seq_len, c, c // n, n, config.intermediate_size, *_low_rank_dims(version, config)]
        self.dims = (ctypes.c_int64 * 10)(*dims)
        self.scratch = scratch(_lib.rwkv_hf_lm_scratch_floats(version, self.dims))
        self.v_first = torch.empty(batch * seq_len, c) if version == 7 else None
        self.threads = torch.get_num_threads()

    def _initial_state(self, batch, c):
        if self.version == 4:
            state = torch.zeros(batch, 3, c)
            state[:, 2] = V4_EMPTY_LOGSCALE
            return state
        return torch.zeros(batch, self.dims[3], self.dims[4], self.dims[4])

    def block(self, blk, hidden, att_shift, wkv_state, ffn_shift):
        """One ``RwkvLMBlock`` on ``hidden`` [B, T, C], updated in place (callers keep the copies
        they need); the states come back as the eager forward returns them. States passed in
        (a cache's contiguous float32 tensors) are updated in place when ``update_states``."""
        if blk.layer_id == 0:
            hidden = blk.ln0(hidden)  # a fresh tensor: the caller's embeddings stay untouched
        b, _, c = hidden.shape
        # (float32 contiguous states are used as they are, so a cache's are updated in place; any
        # other is converted, and the caller's cache write copies the result back)
        att_shift, ffn_shift = (None if s is None else s.to(torch.float32).contiguous() for s in (att_shift, ffn_shift))
        att_out = att_shift if att_shift is not None and self.update_states else torch.empty(b, c)
        ffn_out = ffn_shift if ffn_shift is not None and self.update_states else torch.empty(b, c)
        if wkv_state is None:
            wkv_state = self._initial_state(b, c)
        elif wkv_state.dtype != torch.float32 or not wkv_state.is_contiguous() or not self.update_states:
            wkv_state = wkv_state.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        params = _PARAMS[self.version](blk)
        gn_eps = blk.attn.ln_x.eps if self.version != 4 else 0.0
        status = _lib.rwkv_hf_lm_block(
            self.version, self.dims, ptr_array(params), blk.ln1.eps, gn_eps,
            hidden.data_ptr(), ptr(att_shift), att_out.data_ptr(), wkv_state.data_ptr(), wkv_state.data_ptr(),
            ptr(ffn_shift), ffn_out.data_ptr(), ptr(self.v_first), int(blk.layer_id == 0), V7_DECAY_SCALE,
            self.scratch.data_ptr(), self.threads, ptr(self.mask))
        if status == 3:
            raise MemoryError("rwkv_hf fused CPU block: the WKV kernel could not allocate its buffers")
        if status != 0:
            raise RuntimeError(f"rwkv_hf fused CPU block failed (status {status})")
        return hidden, att_out, wkv_state, ffn_out
