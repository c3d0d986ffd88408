"""What the fused CPU inference paths of the model families (:mod:`rwkv_hf.lm.cpu_fused`,
:mod:`rwkv_hf.vision.cpu_fused`) share: the check that a module tree is exactly what their C
code reads, and the scratch memory their C calls work in."""
import ctypes
import threading

import torch
from torch import nn
from torch.nn.modules import module as _module

__all__ = ["plain", "ptr", "ptr_array", "scratch"]

_PLAIN_TORCH = (nn.ModuleList, nn.Linear, nn.LayerNorm, nn.GroupNorm, nn.Identity)

# Scratch kept between calls, per thread: a fresh multi-megabyte buffer page-faults on first
# touch (about 3% of a 512-token prefill). Up to this many bytes are kept (a 512-token RWKV-7
# prefill at C=768 needs 34 MB).
_SCRATCH_KEEP = 64 << 20
_scratch = threading.local()


def plain(module, modeling, allow=()):
    """Whether ``module`` and everything under it is what a fused path reads: modules of the
    modeling file named ``modeling`` and plain torch ModuleList / Linear / LayerNorm / GroupNorm /
    Identity (and the types in ``allow``), without hooks (nor accelerate's ``_hf_hook``, nor
    global module hooks), every parameter a contiguous float32 CPU tensor. A PEFT, parametrised or quantised wrapper is
    another type, so it sends the call to the eager path."""
    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return False
    stack = [module]
    while stack:
        m = stack.pop()
        if not (type(m) in _PLAIN_TORCH or type(m) in allow or type(m).__module__ == modeling):
            return False
        if (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or "_hf_hook" in m.__dict__):
            return False
        for p in m._parameters.values():
            if p is not None and (p.dtype is not torch.float32 or not p.is_cpu or not p.is_contiguous()):
                return False
        stack.extend(m._modules.values())
    return True


def scratch(floats):
    """A float32 buffer of at least ``floats`` elements: this thread's, reused from call to call
    (one caller at a time per thread: a fused forward never nests another)."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < floats:
        buf = torch.empty(floats)
        if floats * 4 <= _SCRATCH_KEEP:
            _scratch.buf = buf
    return buf


def ptr(t):
    """A tensor's data pointer for a C call; None (NULL) for None."""
    return None if t is None else t.data_ptr()


def ptr_array(tensors):
    """A C array of the tensors' data pointers (NULL for None): parameters read in place."""
    return (ctypes.c_void_p * len(tensors))(*map(ptr, tensors))
