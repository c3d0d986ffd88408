"""Fused CPU inference kernel of the Vision-RWKV models: the Q-Shift and its lerps in one pass.

``modeling_vrwkv.q_shift`` followed by ``torch.lerp`` is the definition (and what training, other
dtypes and devices run); eagerly it is a zero fill, five strided copies and a pass per lerp,
which at 224 px (196 patches, C=192) cost more than the block's matmuls. Float32 CPU inference
without gradients runs ``cuda_ext/vision_cpu.cpp`` instead (built into the operator layer's CPU
library); ``tests/test_vision.py`` checks it against the eager form. ``RWKV_HF_VISION_FUSED=0``
turns it off.
"""
import ctypes
import os

import torch

from ..ops import cpu_backend

__all__ = ["ENV", "q_shift_lerp"]

ENV = "RWKV_HF_VISION_FUSED"

_lib = None  # the declared library, or False once it failed to load


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
        _lib = lib
    return _lib or None


def q_shift_lerp(x, grid, shift_pixel, gamma, group, mus):
    """``[torch.lerp(q_shift(x), x, mu) for mu in mus]`` (``q_shift(x)`` itself for a None) in one
    pass, or None where this kernel does not apply (gradients, not float32 on CPU, a grid that
    does not match x, the switch off, no compiler): the caller then runs the eager form."""
    if torch.is_grad_enabled() or os.environ.get(ENV, "1") == "0":
        return None
    b, n, c = x.shape
    h, w = grid
    if x.device.type != "cpu" or x.dtype != torch.float32 or h * w != n or c % group:
        return None
    if any(m is not None and (m.dtype != torch.float32 or m.device.type != "cpu" or m.numel() != c) for m in mus):
        return None
    if _load() is None:
        return None
    bounds = [int(group * gamma * i) for i in range(5)]  # q_shift's channel boundaries
    if bounds[4] > group:
        return None
    x = x.contiguous()
    mus = [None if m is None else m.contiguous() for m in mus]
    out = torch.empty(len(mus), b, n, c)
    e = (ctypes.c_int64 * 5)(*bounds)
    ptrs = (ctypes.c_void_p * len(mus))(*(None if m is None else m.data_ptr() for m in mus))
    _lib.rwkv_hf_vision_q_shift_lerp(b, h, w, c, group, shift_pixel, e, x.data_ptr(), len(mus), ptrs,
                                     out.data_ptr(), torch.get_num_threads())
    return list(out.unbind(0))
