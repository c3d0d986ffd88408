"""Fused CPU inference of the Vision-RWKV models and of RWKV-CLIP's text blocks (float32, no
gradients, eval mode).

``modeling_vrwkv.py`` is the definition (and what training, other dtypes and devices run). At
224 px a VRWKV block's eager ops around its small matmuls (the Q-Shift alone is a zero fill and
five strided copies, then a pass per lerp) cost more than the matmuls. So float32 CPU inference
runs ``cuda_ext/vision_cpu.cpp`` (built into the operator layer's CPU library): a whole VRWKV
or VRWKV6 block as one C call, its matmuls on torch's own sgemm, its recurrence on the operator
layer's kernels; where a whole block does not apply (no BLAS symbol in torch), the Q-Shift and
its lerps still run as one pass. ``tests/test_vision.py`` checks both against the eager forms.
``RWKV_HF_VISION_FUSED=0`` turns them off.
"""
import ctypes
import os

import torch
from torch import nn

from ..fused_cpu import plain, ptr_array, scratch
from ..ops import cpu_backend

__all__ = ["ENV", "q_shift_lerp", "run_block", "run_text_block"]

ENV = "RWKV_HF_VISION_FUSED"

_lib = None  # the declared library, or False once it failed to load
_blas = None  # whether torch's sgemm was handed to it (the whole-block path)


def _load():
    global _lib
    if _lib is None:
        try:
            lib = cpu_backend.load()
        except RuntimeError:  # no compiler: the operator layer says so once when it falls back
            _lib = False
            return None
        i64, p = ctypes.c_int64, ctypes.c_void_p
        lib.rwkv_hf_vision_q_shift_lerp.argtypes = ([i64] * 6 + [ctypes.POINTER(i64), p, i64, ctypes.POINTER(p), p,
                                                    ctypes.c_int])
        lib.rwkv_hf_vision_v4_scratch_floats.argtypes = [i64] * 4
        lib.rwkv_hf_vision_v4_scratch_floats.restype = i64
        lib.rwkv_hf_vision_v4_block.argtypes = ([i64] * 5 + [ctypes.POINTER(i64), ctypes.c_int, ctypes.POINTER(p),
                                                ctypes.c_float, p, p, ctypes.c_int])
        lib.rwkv_hf_vision_v6_scratch_floats.argtypes = [i64] * 7
        lib.rwkv_hf_vision_v6_scratch_floats.restype = i64
        lib.rwkv_hf_vision_v6_block.argtypes = ([i64] * 4 + [ctypes.POINTER(i64)] * 2 + [ctypes.c_int, ctypes.POINTER(p),
                                                ctypes.c_float, ctypes.c_float, p, p, ctypes.c_int])
        _lib = lib
    return _lib or None


def _load_blas():
    global _blas
    if _blas is None:
        try:
            cpu_backend.load_blas()
            _blas = True
        except RuntimeError:  # no BLAS symbol in this torch: the eager blocks (and fused Q-Shift)
            _blas = False
    return _blas


def _bounds(gamma, group):
    """q_shift's channel boundaries within a group, or None past the group (the eager form
    clamps them)."""
    bounds = [int(group * gamma * i) for i in range(5)]
    return None if bounds[4] > group else bounds


def q_shift_lerp(x, grid, shift_pixel, gamma, group, mus):
    """``[torch.lerp(q_shift(x), x, mu) for mu in mus]`` (``q_shift(x)`` itself for a None) in one
    pass, or None where this kernel does not apply (gradients, torch.compile, not float32 on CPU, a
    grid that does not match x, the switch off, no compiler): the caller then runs the eager form."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or os.environ.get(ENV, "1") == "0":
        return None
    b, n, c = x.shape
    h, w = grid
    if x.device.type != "cpu" or x.dtype != torch.float32 or h * w != n or c % group:
        return None
    if any(m is not None and (m.dtype != torch.float32 or m.device.type != "cpu" or m.numel() != c) for m in mus):
        return None
    if _load() is None:
        return None
    bounds = _bounds(gamma, group)
    if bounds is None:
        return None
    x = x.contiguous()
    mus = [None if m is None else m.contiguous() for m in mus]
    out = torch.empty(len(mus), b, n, c)
    e = (ctypes.c_int64 * 5)(*bounds)
    if _lib.rwkv_hf_vision_q_shift_lerp(b, h, w, c, group, shift_pixel, e, x.data_ptr(), len(mus), ptr_array(mus),
                                        out.data_ptr(), torch.get_num_threads()) != 0:
        raise MemoryError("rwkv_hf fused Q-Shift: could not allocate its row buffers")
    return list(out.unbind(0))


def _ffn_params(ffn):
    kn = ffn.key_norm
    return [ffn.spatial_mix_k, ffn.spatial_mix_r, ffn.key.weight, kn and kn.weight, kn and kn.bias,
            ffn.receptance.weight, ffn.value.weight]


def _v4_params(block):
    att, akn = block.att, block.att.key_norm
    return [block.ln1.weight, block.ln1.bias, block.ln2.weight, block.ln2.bias, att.spatial_mix_k,
            att.spatial_mix_v, att.spatial_mix_r, att.key.weight, att.value.weight, att.receptance.weight,
            att.spatial_decay, att.spatial_first, akn and akn.weight, akn and akn.bias, att.output.weight,
            *_ffn_params(block.ffn), block.gamma1, block.gamma2]


def _v6_params(block, ffn_params=None):
    att, akn = block.att, block.att.key_norm
    return [block.ln1.weight, block.ln1.bias, block.ln2.weight, block.ln2.bias, att.time_maa_x, att.time_maa_w1,
            att.time_maa_w2, att.time_maa_w, att.time_maa_k, att.time_maa_v, att.time_maa_r, att.time_maa_g,
            att.receptance.weight, att.key.weight, att.value.weight, att.gate.weight, att.time_decay,
            att.time_decay_w1, att.time_decay_w2, att.time_faaaa, akn and akn.weight, akn and akn.bias,
            att.ln_x.weight, att.ln_x.bias, att.output.weight, *(ffn_params or _ffn_params(block.ffn)),
            getattr(block, "gamma1", None), getattr(block, "gamma2", None)]


def _applies(block, x):
    """The conditions every fused block shares: inference (no gradients, not compiling, eval
    mode), float32 on CPU, the switch on, the library loaded."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or block.training or \
            os.environ.get(ENV, "1") == "0":
        return False
    return x.device.type == "cpu" and x.dtype == torch.float32 and _load() is not None and _load_blas()


def _own_copy(block, x):
    """The block's own copy of x, which the C block updates in place (callers may keep x, e.g. as a
    collected hidden state); block 0 normalises first, which makes one."""
    return block.ln0(x) if block.layer_id == 0 else x.clone(memory_format=torch.contiguous_format)


def _run_v6(block, x, grid, shift, post_norm, params):
    """One VRWKV6-layout block (``v6_block``) over x [B, rows*cols, C]; returns the block's output
    (:func:`_own_copy`, updated in place)."""
    b, n, c = x.shape
    att = block.att
    x = _own_copy(block, x)
    f = block.ffn.key.out_features
    dm, dd = att.time_maa_w2.shape[1], att.time_decay_w1.shape[1]
    buf = scratch(_lib.rwkv_hf_vision_v6_scratch_floats(b, n, c, f, att.head_size, dm, dd))
    status = _lib.rwkv_hf_vision_v6_block(
        b, grid[0], grid[1], c, (ctypes.c_int64 * 4)(f, att.head_size, dm, dd), (ctypes.c_int64 * 7)(*shift),
        int(post_norm), ptr_array(params), block.ln1.eps, att.ln_x.eps, x.data_ptr(), buf.data_ptr(),
        torch.get_num_threads())
    _check(status)
    return x


def _check(status):
    if status == 3:
        raise MemoryError("rwkv_hf fused Vision-RWKV block: could not allocate the WKV kernel's buffers")
    if status != 0:
        raise RuntimeError(f"rwkv_hf fused Vision-RWKV block failed (status {status})")


def run_text_block(block, x):
    """RWKV-CLIP's text block (``RwkvClipTextBlock``) on x [B, T, C] as one C call (the VRWKV6
    block's): its bidirectional shift is the Q-Shift of a one-row grid whose first half of each
    head's channels comes from the left and second half from the right, and its channel-mix
    ``x + (shift(x) - x) * time_maa`` the lerp with ``1 - time_maa``. None where that does not
    apply (as :func:`run_block`)."""
    # (its residual dropout is the identity here: eval mode)
    if not _applies(block, x) or not plain(block, "rwkv_hf.clip.modeling_rwkv_clip", allow=(nn.Dropout,)):
        return None
    group = block.att.head_size
    if x.shape[-1] % group or group % 2:
        return None
    ffn = block.ffn
    ffn_params = [1 - ffn.time_maa_k, 1 - ffn.time_maa_r, ffn.key.weight, None, None, ffn.receptance.weight,
                  ffn.value.weight]
    shift = (group, 1, 0, group // 2, group, group, group)
    return _run_v6(block, x, (1, x.shape[1]), shift, False, _v6_params(block, ffn_params))


def run_block(block, x, grid):
    """A whole Vision-RWKV block (``VrwkvBlock``, VRWKV or VRWKV6) on x [B, H*W, C] as one C call,
    returning a new tensor (x is left as it is); None where that does not apply (gradients,
    torch.compile, training mode, not float32 on CPU, hooks or wrapped modules, parameters not
    float32, no BLAS symbol in torch, the switch off): the caller then runs the block eagerly."""
    if not _applies(block, x):
        return None
    b, n, c = x.shape
    h, w = grid
    if h * w != n:
        return None
    att, ffn = block.att, block.ffn
    v6 = type(att).__name__ == "Vrwkv6SpatialMix"
    if not (v6 or type(att).__name__ == "VrwkvSpatialMix") or att.shift != ffn.shift:
        return None
    shift_pixel, gamma, group = att.shift
    bounds = _bounds(gamma, group)
    if bounds is None or c % group or not plain(block, "rwkv_hf.vision.modeling_vrwkv"):
        return None
    if v6:
        return _run_v6(block, x, grid, (group, shift_pixel, *bounds), block.post_norm, _v6_params(block))
    x = _own_copy(block, x)
    f = ffn.key.out_features
    buf = scratch(_lib.rwkv_hf_vision_v4_scratch_floats(b, n, c, f))
    status = _lib.rwkv_hf_vision_v4_block(
        b, h, w, c, f, (ctypes.c_int64 * 7)(group, shift_pixel, *bounds), int(block.post_norm),
        ptr_array(_v4_params(block)), block.ln1.eps, x.data_ptr(), buf.data_ptr(), torch.get_num_threads())
    _check(status)
    return x
