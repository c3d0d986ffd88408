"""The WKV operator layer: every RWKV recurrence, behind one call per op.

Layouts (one for the whole package)
-----------------------------------
* Matrix-state ops (RWKV-5/6/7, bidirectional v6): per-token tensors are
  ``[B, T, H, K]`` (``v`` is ``[B, T, H, V]``); the state is ``[B, H, K, V]``
  (key-major, as flash-linear-attention; BlinkDL's v7 state is its transpose).
* Per-channel ops (RWKV-4, bidirectional v4): per-token tensors are ``[B, T, C]``;
  the state is ``[B, 3, C]`` = (num, den, logscale): the accumulators are
  ``num * exp(logscale)`` and ``den * exp(logscale)`` (the empty state is 0, 0,
  -1e38), the same triple as BlinkDL's ``aa, bb, pp``.
* Bidirectional ops carry two states stacked on dim 1: ``[:, 0]`` enters from the
  left (tokens before the segment) and leaves after the last token; ``[:, 1]`` enters
  from the right (tokens after the segment) and leaves before the first token. So a
  sequence split in two reproduces the one-call result when each half gets the other
  half's outgoing state.

Decays are always passed as the **log** of the per-step decay factor (``w``, the
factor is ``exp(w)``): ``-exp(time_decay)`` for RWKV-4/5/6,
``-0.6065306597126334 * sigmoid(.)`` for RWKV-7, ``-spatial_decay / T`` for
Vision-RWKV. Causal ops require ``w <= 0``. The decay's values (finite; ``<= 0`` for
causal ops) are checked for CPU tensors; on a GPU that check would read the decay back to the
host, a device synchronisation on every call (every layer of every step), so it runs there
only with ``RWKV_HF_CHECK_VALUES=1`` (shapes, dtypes and devices are always checked).

Math (``S`` the state, per head; ``x^T`` a row vector)
-----------------------------------------------------
* ``wkv4``:  ``y_t = (N_t + e^{u+k_t} v_t) / (D_t + e^{u+k_t})`` with
  ``N_t = sum_{i<t} e^{(t-1-i) w + k_i} v_i`` and ``D_t`` the same without ``v``.
* ``bi_wkv4``: ``y_t = (sum_{i!=t} e^{(|t-i|-1) w + k_i} v_i + e^{u+k_t} v_t) /
  (sum_{i!=t} e^{(|t-i|-1) w + k_i} + e^{u+k_t})`` (Vision-RWKV's documented
  formula; the official kernels add 1e-6 to a max-normalised denominator, a relative
  change of about 1e-6, which is left out here).
* ``wkv5`` / ``wkv6``: ``y_t = r_t^T (S_{t-1} + diag(u) k_t v_t^T)``,
  ``S_t = diag(e^{w_t}) S_{t-1} + k_t v_t^T``; ``w`` is ``[H, K]`` for v5 (constant
  in time) and ``[B, T, H, K]`` for v6.
* ``bi_wkv6``: ``y_t = r_t^T (diag(u) k_t v_t^T + sum_{i<t} prod_{t>j>i} diag(e^{w_j})
  k_i v_i^T + sum_{i>t} prod_{t<j<i} diag(e^{w_j}) k_i v_i^T)``.
* ``wkv7``: ``S_t = diag(e^{w_t}) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T``,
  ``y_t = S_t^T r_t``; RWKV-7 passes ``a = -kk``, ``b = kk * iclr``.
* ``point_wkv`` (PointRWKV's, as released; ``K = V``): ``y_t = r_t * ((L_{t-1} + R_{t+1}) k_t
  + u * k_t (1^T v_t))`` (``*`` elementwise), ``L_t = diag(e^{w_t}) L_{t-1} + k_t v_t^T`` from
  the left, ``R_t = diag(e^{w_t}) R_{t+1} + k_t v_t^T`` from the right: the state is contracted
  with the key over its *value* index, and the bonus scales ``k_t`` by the sum of ``v_t``.
  PointRWKV averages two one-way scans that each count the token: it passes ``r = sigmoid(.)/2``
  and ``u = 2 u``. The compiled backends run its two one-way scans (``A = L_{t-1} k_t`` and
  ``R_{t+1} k_t``) as kernels; the bonus and the gate ``r`` are elementwise, in torch.

``farthest_point_sample(points, n)`` (PointRWKV's choice of patch centres) is the one op here that
is not a WKV: a recurrence over sampling steps (each step's nearest distances update the last
step's), with the same backends and dispatch; it returns indices and has no gradient.

Backends
--------
``reference`` (token loops, the oracle, float64-capable), ``torch`` (chunked
parallel pure PyTorch, correct on any device), ``cpu`` (compiled C++ kernels,
``cuda_ext/wkv_cpu.cpp``, built with the system compiler on first use; the default
for CPU tensors) and ``cuda`` (the compiled extension in ``cuda_ext/``,
built on first use; the default for CUDA tensors). Choose per call with ``backend=`` or for the process with the
environment variable ``RWKV_HF_WKV_BACKEND``. A backend that cannot run a call
(no GPU, no compiler, float64, an unsupported head size) says why once, as a
warning, and the call runs on ``torch``. States and accumulations are float32
whatever the input dtype (float64 when an input is float64); outputs come back in
the input dtype.

Every op returns ``(y, final_state)``; ``final_state`` is ``None`` unless
``output_final_state=True``. Gradients flow to every tensor input, the initial
state included.

torch.compile: the ``cpu`` and ``cuda`` kernels are also ``torch.library`` custom operators
(``torch.ops.rwkv_hf.*``, :mod:`rwkv_hf.ops.custom_ops`) with fake implementations, which the
backends' autograd Functions call while compiling, so compiled models trace through them in one
graph. Under compilation the decay's value checks run as asserts in the graph
(``RuntimeError``); the ``torch`` backend's per-channel form picks its precision from the values
and runs eagerly between graphs.
"""
import functools
import math
import os
import warnings
from types import SimpleNamespace

import torch

from . import cpu_backend as _cpu
from . import cuda_backend as _cuda
from . import reference as _reference
from . import torch_point as _torch_point
from . import torch_wkv4 as _torch_wkv4
from . import torch_wkv6 as _torch_wkv6
from . import torch_wkv7 as _torch_wkv7

__all__ = ["wkv4", "bi_wkv4", "wkv5", "wkv6", "bi_wkv6", "wkv7", "point_wkv", "farthest_point_sample",
           "available_backends",
           "BACKEND_ENV", "CHECK_VALUES_ENV"]

BACKEND_ENV = "RWKV_HF_WKV_BACKEND"
CHECK_VALUES_ENV = "RWKV_HF_CHECK_VALUES"
V4_EMPTY_LOGSCALE = -1e38



def _reversed_by_flipping(wkv6):
    """The right-to-left half of ``bi_wkv6`` (wkv6 without the bonus, the state entering from the
    right) for a backend without a kernel of its own: a causal scan over the flipped sequence."""
    def run(r, k, v, w, state):
        y, final = wkv6(r.flip(1), k.flip(1), v.flip(1), w.flip(1), r.new_zeros(r.shape[2:]), state)
        return y.flip(1), final
    return run


def _bi_from_halves(wkv6, wkv6_reversed):
    """``bi_wkv6`` as the sum of a left-to-right scan with the bonus and a right-to-left scan
    without it (the token is counted once); state [B, 2, H, K, V] holds one state per direction.
    The halves run in the compute dtype (float32 or float64), so the sum is rounded once."""
    def run(r, k, v, w, u, state):
        y_fwd, s_fwd = wkv6(r, k, v, w, u, state[:, 0])
        y_bwd, s_bwd = wkv6_reversed(r, k, v, w, state[:, 1])
        return y_fwd + y_bwd, torch.stack([s_fwd, s_bwd], 1)
    return run


def _expanding_decay(wkv6):
    """``wkv5`` for a backend whose wkv6 takes the decay per token: w [H, K] expanded (a view)."""
    def run(r, k, v, w, u, state):
        return wkv6(r, k, v, w.expand(r.shape), u, state)
    return run


def _point_from_scans(point_scan):
    """``point_wkv`` from a backend's two one-way scans (``point_scan``: A [2, B, T, H, K], the
    states' contractions with the key, in float32 or float64; the torch form's or the compiled
    kernels'): the bonus and the gate are elementwise, in A's dtype, and autograd differentiates
    them."""
    def run(r, k, v, w, u, state):
        A, final = point_scan(k, v, w, state)
        dt = A.dtype
        bonus = u.to(dt) * k.to(dt) * v.sum(-1, keepdim=True, dtype=dt)
        return r.to(dt) * (A[0] + A[1] + bonus), final
    return run


def _backend(wkv4, bi_wkv4, wkv6, wkv7, point_wkv, farthest_point_sample, wkv6_reversed=None, wkv5=None,
             bi_wkv6=None, takes_no_state=False):
    """A backend's ops; ``wkv5`` and ``bi_wkv6`` are composed from wkv6 unless it has its own.
    ``takes_no_state``: its matrix-state ops take state=None for no initial state (zero)."""
    return SimpleNamespace(
        wkv4=wkv4, bi_wkv4=bi_wkv4, wkv6=wkv6, wkv7=wkv7, wkv5=wkv5 or _expanding_decay(wkv6),
        bi_wkv6=bi_wkv6 or _bi_from_halves(wkv6, wkv6_reversed or _reversed_by_flipping(wkv6)),
        takes_no_state=takes_no_state, point_wkv=point_wkv, farthest_point_sample=farthest_point_sample)


_BACKENDS = {
    "reference": _backend(_reference.wkv4, _reference.bi_wkv4, _reference.wkv6, _reference.wkv7,
                          _reference.point_wkv, _reference.farthest_point_sample),
    # Its sampling is the reference's loop (small tensor ops, any device).
    "torch": _backend(_torch_wkv4.wkv4, _torch_wkv4.bi_wkv4, _torch_wkv6.wkv6, _torch_wkv7.wkv7,
                      _point_from_scans(_torch_point.point_scan), _reference.farthest_point_sample),
    "cpu": _backend(_cpu.wkv4, _cpu.bi_wkv4, _cpu.wkv6, _cpu.wkv7, _point_from_scans(_cpu.point_scan),
                    _cpu.farthest_point_sample, wkv6_reversed=_cpu.wkv6_reversed),
    # Its per-token inputs stay in bfloat16 / float16: its own bi_wkv6 keeps the sum in float32.
    # Its kernels start from a zero state without a tensor of zeros to fill and read.
    "cuda": _backend(_cuda.wkv4, _cuda.bi_wkv4, _cuda.wkv6, _cuda.wkv7, _point_from_scans(_cuda.point_scan),
                     _cuda.farthest_point_sample, wkv5=_cuda.wkv5, bi_wkv6=_cuda.bi_wkv6, takes_no_state=True),
}
_COMPILED = {"cpu": _cpu, "cuda": _cuda}
_warned = set()


def available_backends():
    """Names of the backends that can run in this process (``cpu`` only with a working C++
    compiler, ``cuda`` only with a GPU and a working extension; asking may compile them)."""
    return [name for name in _BACKENDS if name not in _COMPILED or _COMPILED[name].available()[0]]


# Process-wide facts (a build is tried once), taken by torch.compile as constants: tracing them
# would trace a compiler run and file reads.
@torch.compiler.assume_constant_result
def _compiled_available(name):
    return _COMPILED[name].available()


@torch.compiler.assume_constant_result
def _cpu_sources_present():
    return _cpu.sources_present()


def _fallback(why):
    if why not in _warned:
        _warned.add(why)
        warnings.warn(f"rwkv_hf.ops: {why}; using the torch backend", RuntimeWarning, stacklevel=4)
    return "torch"


def _choose(op, requested, tensors):
    """The backend that runs this call: requested (argument or environment), else cuda for
    CUDA tensors, else cpu for the ops it has, else torch. A compiled backend that cannot run a
    call falls back to torch: with a warning (once per reason) if it was requested or failed to
    build, silently for an op or input it does not cover by design."""
    name = requested or os.environ.get(BACKEND_ENV)
    if name is not None and name not in _BACKENDS:
        raise ValueError(f"unknown WKV backend {name!r} (from backend= or ${BACKEND_ENV}); "
                         f"available: {', '.join(_BACKENDS)}")
    if name is None:
        name = "cuda" if next(iter(tensors.values())).is_cuda else "cpu"
        if getattr(_BACKENDS[name], op) is None:
            return "torch"  # no kernel for this op (yet): by design, silently
        if name == "cpu":
            if _cpu.unsupported_reason(op, **tensors) is not None or not _cpu_sources_present():
                return "torch"  # an op or input it lacks, a remote-code copy without sources
            ok, why = _compiled_available(name)
            return name if ok else _fallback(why)
    if getattr(_BACKENDS[name], op) is None:
        return _fallback(f"the {name} backend has no {op} kernel")
    if name in _COMPILED:
        backend = _COMPILED[name]
        why = backend.unsupported_reason(op, **tensors)
        if why is None:
            ok, why = _compiled_available(name)
            if ok:
                return name
        return _fallback(f"the {name} backend cannot run {op} ({why})")
    return name


# ---------------------------------------------------------------------------- validation

def _bind(op, specs):
    """Check each (name, tensor, symbolic shape) against one consistent set of sizes.

    Symbols are bound by the first tensor that uses them; a mismatch raises a
    ValueError naming the argument, the expected shape and the shape received.
    """
    sizes = {}
    for name, x, dims in specs:
        if x is None:
            continue
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{op}: {name} must be a floating-point tensor, got {x.dtype}")
        shape, known = x.shape, dict(sizes)  # the bindings before this tensor, for the message
        if len(shape) != len(dims) or not all(
                n == d if isinstance(d, int) else sizes.setdefault(d, n) == n for d, n in zip(dims, shape)):
            want = "[" + ", ".join(f"{d}={known[d]}" if d in known else str(d) for d in dims) + "]"
            rank = "" if len(shape) == len(dims) else f" ({len(dims)}-D)"
            raise ValueError(f"{op}: {name} must have shape {want}{rank}, got {list(shape)}")
    for d in ("B", "T"):
        if sizes.get(d, 1) == 0:
            raise ValueError(f"{op}: empty input ({d}=0); sequences need at least one token")
    return sizes


def _checks_values(device):
    """Whether the decay's values are checked for tensors on ``device``: on the CPU, where
    reading them costs one reduction; elsewhere only with $RWKV_HF_CHECK_VALUES=1, since the
    host would wait for the device on every call."""
    return device.type == "cpu" or os.environ.get(CHECK_VALUES_ENV) == "1"


def _prepare(op, specs, activations, decay, causal, backend):
    """Validate; return (backend, compute dtype, output dtype, tensors ready for the backend).

    The reference and torch backends get every tensor in the compute dtype; the cuda
    backend takes low-precision per-token inputs as they are (and float32 states)."""
    _bind(op, specs)
    tensors = {name: x for name, x, _ in specs if x is not None}
    devices = {x.device for x in tensors.values()}
    if len(devices) > 1:
        raise ValueError(f"{op}: all inputs must be on one device, got "
                         + ", ".join(f"{n}: {x.device}" for n, x in tensors.items()))
    act_dtypes = {tensors[n].dtype for n in activations}
    if len(act_dtypes) > 1:
        raise ValueError(f"{op}: {', '.join(activations)} must share one dtype, got "
                         + ", ".join(f"{n}: {tensors[n].dtype}" for n in activations))
    out_dtype = act_dtypes.pop()
    compute = torch.float64 if any(x.dtype == torch.float64 for x in tensors.values()) else torch.float32
    check_values = _checks_values(devices.pop())
    if check_values and torch.compiler.is_compiling():
        # A traced graph cannot read values back to Python: the checks run as asserts in it.
        x = tensors[decay].detach()
        torch._assert_async(torch.isfinite(x).all(), f"{op}: {decay} (the log-decay) contains NaN or inf")
        if causal:
            torch._assert_async((x <= 0).all(), f"{op}: {decay} is the log of the per-step decay and must be <= 0")
    elif check_values:
        # One reduction for all value checks (NaN propagates into both ends): cheap per generation step.
        lo, hi = (float(x) for x in torch.aminmax(tensors[decay].detach()))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{op}: {decay} (the log-decay) contains NaN or inf")
        if causal and hi > 0:
            raise ValueError(f"{op}: {decay} is the log of the per-step decay and must be <= 0 "
                             f"(e.g. -exp(time_decay)); got a maximum of {hi:.4g}")
    name = _choose(op, backend, tensors)
    if name == "cuda":
        ready = {n: (x.float() if n == "state" else x) for n, x in tensors.items()}
    else:
        ready = {n: (x if x.dtype == compute else x.to(compute)) for n, x in tensors.items()}
    return _BACKENDS[name], compute, out_dtype, ready


def _initial_state(state, shape, device, dtype, per_channel, impl=None):
    if state is not None:
        return state
    if not per_channel and impl is not None and impl.takes_no_state:
        return None  # the backend starts from zero without a tensor of zeros to read
    s = torch.zeros(shape, device=device, dtype=dtype)
    if per_channel:  # (num, den, logscale): an empty accumulator has logscale -> -inf
        s.select(-2, 2).fill_(V4_EMPTY_LOGSCALE)
    return s


def _finish(y, final, out_dtype, output_final_state):
    return y.to(out_dtype), (final if output_final_state else None)


# ---------------------------------------------------------------------------- public ops

def _outside_autocast(op):
    """Run the op with autocast off: its accumulations are fp32 by design, and an enclosing
    autocast region would otherwise push the backends' internal matmuls to bf16/fp16."""
    @functools.wraps(op)
    def run(*args, **kwargs):
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        device_type = first.device.type if first is not None else "cpu"
        if not torch.is_autocast_enabled(device_type):
            return op(*args, **kwargs)
        with torch.autocast(device_type, enabled=False):
            return op(*args, **kwargs)
    return run


@_outside_autocast
def wkv4(k, v, w, u, state=None, *, output_final_state=False, backend=None):
    """RWKV-4 WKV. k, v: [B, T, C]; w (log-decay, <= 0), u: [C]; state: [B, 3, C]."""
    impl, compute, out_dtype, t = _prepare(
        "wkv4", [("k", k, "BTC"), ("v", v, "BTC"), ("w", w, "C"), ("u", u, "C"), ("state", state, ("B", 3, "C"))],
        activations=("k", "v"), decay="w", causal=True, backend=backend)
    B, _, C = k.shape
    s0 = _initial_state(t.get("state"), (B, 3, C), k.device, compute, per_channel=True)
    y, final = impl.wkv4(t["k"], t["v"], t["w"], t["u"], s0)
    return _finish(y, final, out_dtype, output_final_state)


@_outside_autocast
def bi_wkv4(k, v, w, u, state=None, *, output_final_state=False, backend=None):
    """Bidirectional WKV of Vision-RWKV / Restore-RWKV. k, v: [B, T, C]; w (log-decay, any
    sign; Vision-RWKV passes -spatial_decay/T), u: [C] (spatial_first/T); state: [B, 2, 3, C]."""
    impl, compute, out_dtype, t = _prepare(
        "bi_wkv4", [("k", k, "BTC"), ("v", v, "BTC"), ("w", w, "C"), ("u", u, "C"),
                    ("state", state, ("B", 2, 3, "C"))],
        activations=("k", "v"), decay="w", causal=False, backend=backend)
    B, _, C = k.shape
    s0 = _initial_state(t.get("state"), (B, 2, 3, C), k.device, compute, per_channel=True)
    y, final = impl.bi_wkv4(t["k"], t["v"], t["w"], t["u"], s0)
    return _finish(y, final, out_dtype, output_final_state)


@_outside_autocast
def wkv6(r, k, v, w, u, state=None, *, output_final_state=False, backend=None):
    """RWKV-6 WKV. r, k, w (log-decay, <= 0): [B, T, H, K]; v: [B, T, H, V]; u: [H, K];
    state: [B, H, K, V]."""
    return _wkv6("wkv6", r, k, v, w, u, state, output_final_state, backend, w_dims="BTHK")


@_outside_autocast
def wkv5(r, k, v, w, u, state=None, *, output_final_state=False, backend=None):
    """RWKV-5.2 WKV: as :func:`wkv6` with a decay constant in time, w (log-decay): [H, K]."""
    return _wkv6("wkv5", r, k, v, w, u, state, output_final_state, backend, w_dims="HK")


def _wkv6(op, r, k, v, w, u, state, output_final_state, backend, w_dims):
    impl, compute, out_dtype, t = _prepare(
        op, [("r", r, "BTHK"), ("k", k, "BTHK"), ("v", v, "BTHV"), ("w", w, w_dims), ("u", u, "HK"),
             ("state", state, "BHKV")],
        activations=("r", "k", "v"), decay="w", causal=True, backend=backend)
    B, _, H, K = r.shape
    s0 = _initial_state(t.get("state"), (B, H, K, v.shape[-1]), r.device, compute, False, impl)
    run = impl.wkv6 if w.dim() == 4 else impl.wkv5
    y, final = run(t["r"], t["k"], t["v"], t["w"], t["u"], s0)
    return _finish(y, final, out_dtype, output_final_state)


@_outside_autocast
def bi_wkv6(r, k, v, w, u, state=None, *, output_final_state=False, backend=None):
    """Bidirectional RWKV-6 WKV of VRWKV6 / RWKV-CLIP. Shapes as :func:`wkv6`;
    state: [B, 2, H, K, V]."""
    impl, compute, out_dtype, t = _prepare(
        "bi_wkv6", [("r", r, "BTHK"), ("k", k, "BTHK"), ("v", v, "BTHV"), ("w", w, "BTHK"), ("u", u, "HK"),
                    ("state", state, ("B", 2, "H", "K", "V"))],
        activations=("r", "k", "v"), decay="w", causal=True, backend=backend)
    B, T, H, K = r.shape
    s0 = _initial_state(t.get("state"), (B, 2, H, K, v.shape[-1]), r.device, compute, False, impl)
    y, final = impl.bi_wkv6(t["r"], t["k"], t["v"], t["w"], t["u"], s0)
    return _finish(y, final, out_dtype, output_final_state)


@_outside_autocast
def wkv7(r, k, v, w, a, b, state=None, *, output_final_state=False, backend=None):
    """RWKV-7 generalized delta rule. r, k, w (log-decay, <= 0), a, b: [B, T, H, K];
    v: [B, T, H, V]; state: [B, H, K, V]. RWKV-7 passes a = -kk, b = kk * iclr."""
    impl, compute, out_dtype, t = _prepare(
        "wkv7", [("r", r, "BTHK"), ("k", k, "BTHK"), ("v", v, "BTHV"), ("w", w, "BTHK"), ("a", a, "BTHK"),
                 ("b", b, "BTHK"), ("state", state, "BHKV")],
        activations=("r", "k", "v", "a", "b"), decay="w", causal=True, backend=backend)
    B, T, H, K = r.shape
    s0 = _initial_state(t.get("state"), (B, H, K, v.shape[-1]), r.device, compute, False, impl)
    y, final = impl.wkv7(t["r"], t["k"], t["v"], t["w"], t["a"], t["b"], s0)
    return _finish(y, final, out_dtype, output_final_state)


@_outside_autocast
def point_wkv(r, k, v, w, u, state=None, *, output_final_state=False, backend=None):
    """PointRWKV's bidirectional WKV (see the module's math). r, k, v, w (log-decay, <= 0):
    [B, T, H, K]; u: [H, K]; state: [B, 2, H, K, K] (left-entering, right-entering)."""
    impl, compute, out_dtype, t = _prepare(
        "point_wkv", [("r", r, "BTHK"), ("k", k, "BTHK"), ("v", v, "BTHK"), ("w", w, "BTHK"), ("u", u, "HK"),
                      ("state", state, ("B", 2, "H", "K", "K"))],
        activations=("r", "k", "v"), decay="w", causal=True, backend=backend)
    B, T, H, K = r.shape
    s0 = _initial_state(t.get("state"), (B, 2, H, K, K), r.device, compute, False, impl)
    y, final = impl.point_wkv(t["r"], t["k"], t["v"], t["w"], t["u"], s0)
    return _finish(y, final, out_dtype, output_final_state)


def farthest_point_sample(points, n, *, backend=None):
    """Farthest point sampling, PointRWKV's choice of patch centres: indices [B, n] (int64) of
    ``n`` points of each cloud of ``points`` [B, N, 3], point 0 first, then each time the point
    farthest from those taken (the largest squared distance to its nearest taken point; the
    first index on ties). The official ``pointnet2_utils`` starts from a random point instead.

    Computed in float32 (float64 for float64 points) on every backend, with the torch form's
    roundings, so that every backend picks the same points. The points must be finite (checked
    for CPU tensors). ``backend`` as for the WKV ops: ``cpu`` and ``cuda`` run one compiled pass
    per step where the torch form runs about seven small ops."""
    if not isinstance(points, torch.Tensor) or not points.is_floating_point():
        raise ValueError("farthest_point_sample: points must be a floating-point tensor [B, N, 3], got "
                         + (str(points.dtype) if isinstance(points, torch.Tensor) else type(points).__name__))
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"farthest_point_sample: points must have shape [B, N, 3], got {list(points.shape)}")
    N = points.shape[1]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= N:
        raise ValueError(f"farthest_point_sample: n must be an int in [1, N={N}], got {n!r}")
    if _checks_values(points.device) and not torch.compiler.is_compiling() and not torch.isfinite(points).all():
        raise ValueError("farthest_point_sample: points contain NaN or inf")
    compute = torch.float64 if points.dtype == torch.float64 else torch.float32
    name = _choose("farthest_point_sample", backend, {"points": points})
    return _BACKENDS[name].farthest_point_sample(points.to(compute), n)
