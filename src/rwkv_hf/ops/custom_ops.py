"""The compiled kernels' entry points as ``torch.library`` custom operators, for torch.compile.

torch.compile cannot trace a ctypes (cpu backend) or pybind (cuda backend) call. So each entry
point is also registered as a custom operator with a shape-only ("fake") implementation,
which the backends' autograd Functions call while torch.compile traces (as flash-attention
does), and call the implementation directly otherwise (the operator dispatch costs a few
microseconds per call, a good part of a one-token generation step).

The package registers them as ``torch.ops.rwkv_hf.*``. A remote-code copy of the operator
layer (a Hub folder's flat module) registers under a namespace of its own, derived from its
module name, so copies from different folders loaded into one process never replace each
other's operators (or the package's).
"""
import hashlib

import torch

__all__ = ["NAMESPACE", "register", "traced"]

NAMESPACE = "rwkv_hf" if __name__ == "rwkv_hf.ops.custom_ops" else \
    "rwkv_hf_" + hashlib.sha256(__name__.encode()).hexdigest()[:12]


def register(prefix, fn, fake):
    """``fn`` (type-annotated) as the operator ``NAMESPACE::<prefix><fn.__name__>`` with the fake
    implementation ``fake``; None where torch refuses a second definition (a torch that raises
    when this module runs again): the backends then call ``fn`` directly, and torch.compile
    breaks its graph there."""
    try:
        op = torch.library.custom_op(f"{NAMESPACE}::{prefix}{fn.__name__}", fn, mutates_args=())
    except RuntimeError:
        return None
    op.register_fake(fake)
    return op


def traced(op, impl):
    """The operator while torch.compile traces, else the implementation itself."""
    return op if op is not None and torch.compiler.is_compiling() else impl
