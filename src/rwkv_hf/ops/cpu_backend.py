"""CPU backend of ``rwkv_hf.ops``: compiled C++ kernels of the WKV recurrences.

``cuda_ext/wkv_cpu.cpp`` (shipped with the CUDA sources as ``rwkv_hf.cuda_ext``) holds the
forward and backward of RWKV-5/6 (``wkv6``, also run right to left for ``bi_wkv6``), RWKV-7
(``wkv7``), PointRWKV's two-way scan (``point_scan``, for ``point_wkv``), and of the per-channel
ops (``wkv4``, ``bi_wkv4``), in float32 and float64, behind a C ABI; ``point_cpu.cpp`` holds
PointRWKV's farthest point sampling (:func:`farthest_point_sample`). It has no torch headers, so the system C++ compiler (``$CXX``, else
``c++``, ``g++`` or ``clang++``) builds it in a few seconds on the first CPU call, for this
machine's instruction set (``-march=native``), together with ``lm_cpu.cpp`` (the language
models' fused CPU blocks, :mod:`rwkv_hf.lm.cpu_fused`); the library is cached under
``$RWKV_HF_CPU_CACHE`` (default ``~/.cache/rwkv_hf/cpu``) keyed by the sources, the compiler and
the CPU. It is called through ctypes (which releases the GIL) and splits its work over
``torch.get_num_threads()`` threads by (batch, head), or (batch, channel block): on torch's own
OpenMP runtime when torch runs on GNU OpenMP, else on threads of its own.

Each kernel entry point is also a
``torch.library`` custom operator (``torch.ops.rwkv_hf.cpu_*``, with a fake implementation),
which torch.compile traces in place of the ctypes call. Importing this module never raises
and never compiles; :func:`available` says whether the backend can run here, and why not.
"""
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from typing import Optional

import torch
from torch import Tensor

from . import cuda_backend as _cuda
from . import custom_ops as _custom_ops

__all__ = ["wkv4", "bi_wkv4", "wkv6", "wkv6_reversed", "wkv7", "point_scan", "farthest_point_sample",
           "available", "load",
           "unsupported_reason", "OPS"]

SOURCE = "wkv_cpu.cpp"
# Built into one library: the WKV kernels, the language models' fused blocks (rwkv_hf.lm.cpu_fused,
# which call the WKV kernels), Vision-RWKV's fused Q-Shift (rwkv_hf.vision.cpu_fused), PointRWKV's
# farthest point sampling and the header they share.
SOURCES = (SOURCE, "lm_cpu.cpp", "vision_cpu.cpp", "point_cpu.cpp")
HEADERS = ("cpu_common.h",)
CACHE_ENV = "RWKV_HF_CPU_CACHE"
OPS = ("wkv4", "bi_wkv4", "wkv5", "wkv6", "bi_wkv6", "wkv7", "point_wkv", "farthest_point_sample")
# The dispatcher hands this backend float32 (bfloat16 and float16 inputs cast up) or float64.
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# Below this much work (B*H*T*K*V) one thread is faster than starting more (generation steps).
_PARALLEL_WORK = 1 << 18
_CHUNK = 64  # tokens per state snapshot: kChunk of wkv_cpu.cpp
_NATIVE_FLAGS = ("-march=native", "-mprefer-vector-width=512")
# -fno-trapping-math: GCC does not vectorise a loop with a floating-point select (xexp's clamp,
# std::max) unless it may assume comparisons do not trap, except with AVX-512's masks; it
# changes no result.
_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fopenmp-simd", "-fno-trapping-math")

_lock = threading.RLock()
_lib = None
_load_error = None
_blas_error = None  # "" once torch's sgemm is set and checked, else why not
_sources_present = None


# ---------------------------------------------------------------------------- building

def cache_root():
    return _cuda.cache_root(CACHE_ENV, "cpu")


def find_compiler():
    """The C++ compiler to use: ``$CXX``, else the first of c++, g++, clang++ on PATH; or None."""
    env = os.environ.get("CXX")
    if env:
        return shutil.which(env) or env
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _cpu_id():
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [l for l in f if l.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


def _compiler_id(cxx):
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0] if out.stdout else cxx
    except Exception:
        return cxx


def _compile(cxx, srcs, out, flags):
    tmp_dir = os.path.dirname(out)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=tmp_dir)
    os.close(fd)
    try:
        try:
            proc = subprocess.run([cxx, *flags, "-o", tmp, *srcs], capture_output=True, text=True, timeout=600)
        except OSError as e:  # no such compiler: not a folder problem
            raise RuntimeError(f"cannot run {cxx}: {e}") from e
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
            raise RuntimeError("; ".join(errors[:4])[:1500] or proc.stderr.strip()[-1500:]
                               or f"{cxx} exited with {proc.returncode}")
        os.replace(tmp, out)  # atomic: a concurrent process never sees a half-written library
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _torch_uses_libgomp():
    """Whether torch runs on GNU OpenMP, already loaded as libgomp.so.1: then the kernels are built
    with -fopenmp and that runtime (matched by soname) runs their threads too, sharing torch's
    worker pool instead of competing with it."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return False
    try:
        with open("/proc/self/maps") as f:
            return any("libgomp" in line for line in f)
    except OSError:
        return False


def build(verbose=False):
    """Compile the kernels for this machine if no cached build exists; return the library path."""
    srcs = [os.path.join(_cuda.sources_dir(), f) for f in SOURCES]
    cxx = find_compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set $CXX or install g++/clang++)")
    code = b""
    for name in SOURCES + HEADERS:
        with open(os.path.join(_cuda.sources_dir(), name), "rb") as f:
            code += f.read()
    # Flag sets, best first: a compiler without OpenMP or the x86 flags (arm64) gets fewer.
    openmp = ("-fopenmp",) if _torch_uses_libgomp() else ()
    attempts = [_FLAGS + openmp + _NATIVE_FLAGS, _FLAGS + _NATIVE_FLAGS, _FLAGS + openmp, _FLAGS]
    key = hashlib.sha256(code + _compiler_id(cxx).encode() + _cpu_id().encode()
                         + " ".join(attempts[0]).encode()).hexdigest()[:16]
    # The cache, else (unwritable: a read-only home, say) a per-user folder in the temp dir.
    fallback = os.path.join(tempfile.gettempdir(), f"rwkv_hf-cpu-{getattr(os, 'getuid', lambda: 0)()}")
    for out_dir in (cache_root(), fallback):
        out = os.path.join(out_dir, f"wkv_cpu-{key}.so")
        if os.path.isfile(out):
            return out
        try:
            os.makedirs(out_dir, exist_ok=True)
            errors = []
            for flags in dict.fromkeys(attempts):
                try:
                    _compile(cxx, srcs, out, list(flags))
                    break
                except RuntimeError as e:
                    errors.append(e)
            else:
                raise errors[0]  # the best flag set's error says most
        except OSError as e:  # this folder cannot be written
            unwritable = e
            continue
        if verbose:
            print(f"rwkv_hf: compiled the CPU WKV kernels into {out}")
        return out
    raise RuntimeError(f"no writable folder for the compiled kernels ({unwritable})")


def _declare(lib):
    i64, i32, p = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    geo = [i64] * 8  # B, T, H, K, V and the decay's strides over (b, t, h)
    for sfx in ("f32", "f64"):
        getattr(lib, f"rwkv_hf_wkv4_forward_{sfx}").argtypes = [i64] * 3 + [p] * 6 + [i32]
        getattr(lib, f"rwkv_hf_bi_wkv4_forward_{sfx}").argtypes = [i64] * 3 + [p] * 6 + [i32]
        getattr(lib, f"rwkv_hf_wkv4_backward_{sfx}").argtypes = [i64] * 3 + [p] * 12 + [i32]
        getattr(lib, f"rwkv_hf_bi_wkv4_backward_{sfx}").argtypes = [i64] * 3 + [p] * 12 + [i32]
        getattr(lib, f"rwkv_hf_wkv6_forward_{sfx}").argtypes = geo + [i32] + [p] * 9 + [i32]
        getattr(lib, f"rwkv_hf_wkv6_backward_{sfx}").argtypes = geo + [i32] + [p] * 14 + [i32]
        getattr(lib, f"rwkv_hf_wkv7_forward_{sfx}").argtypes = geo + [p] * 10 + [i32]
        getattr(lib, f"rwkv_hf_wkv7_backward_{sfx}").argtypes = geo + [p] * 16 + [i32]
        getattr(lib, f"rwkv_hf_point_forward_{sfx}").argtypes = [i64] * 4 + [p] * 7 + [i32]
        getattr(lib, f"rwkv_hf_point_backward_{sfx}").argtypes = [i64] * 4 + [p] * 10 + [i32]
        getattr(lib, f"rwkv_hf_fps_{sfx}").argtypes = [i64] * 3 + [p] * 2 + [i32]
    if lib.rwkv_hf_wkv_cpu_chunk() != _CHUNK:
        raise RuntimeError(f"the kernels snapshot every {lib.rwkv_hf_wkv_cpu_chunk()} tokens, this "
                           f"module expects {_CHUNK}")
    return lib


def load(verbose=False):
    """The compiled kernel library (compiled on first use). Raises RuntimeError saying why not."""
    global _lib, _load_error
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            if _load_error is not None:
                raise RuntimeError(_load_error)
            try:
                _lib = _declare(ctypes.CDLL(build(verbose=verbose)))
            except Exception as e:  # remember: do not retry the compiler on every call
                _load_error = f"the compiled CPU kernels are unavailable: {e}"
                raise RuntimeError(_load_error) from e
    return _lib


def _torch_sgemm():
    """The address of the Fortran ``sgemm_`` torch's CPU library exports (its MKL or OpenBLAS),
    or None."""
    libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll"):
        path = os.path.join(libdir, name)
        if os.path.exists(path):
            try:
                return ctypes.cast(ctypes.CDLL(path).sgemm_, ctypes.c_void_p).value
            except (OSError, AttributeError):
                return None
    return None


def load_blas():
    """The library with torch's own BLAS ``sgemm_`` handed to it, for the fused model blocks
    (:mod:`rwkv_hf.lm.cpu_fused`, :mod:`rwkv_hf.vision.cpu_fused`), whose matmuls call it.
    Its calling convention (32-bit integers, column-major) is checked on one product. Raises
    RuntimeError saying why not."""
    global _blas_error
    lib = load()
    with _lock:
        if _blas_error is None:
            sgemm = _torch_sgemm()
            if sgemm is None:
                _blas_error = "this torch build exports no sgemm_ from its CPU library"
            else:
                lib.rwkv_hf_cpu_set_sgemm.argtypes = [ctypes.c_void_p]
                lib.rwkv_hf_cpu_linear.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 3
                lib.rwkv_hf_cpu_set_sgemm(sgemm)
                x, w, y = torch.randn(3, 5), torch.randn(4, 5), torch.empty(3, 4)
                ok = lib.rwkv_hf_cpu_linear(3, 5, 4, x.data_ptr(), w.data_ptr(), y.data_ptr()) == 0 and \
                    torch.allclose(y, x @ w.T, rtol=1e-5, atol=1e-5)
                _blas_error = "" if ok else "torch's sgemm_ does not have the expected calling convention"
    if _blas_error:
        raise RuntimeError(_blas_error)
    return lib


def available():
    """(True, 'ok') if the kernels load (compiling them if needed), else (False, why not)."""
    try:
        load()
        return True, "ok"
    except Exception as e:
        return False, str(e)


def sources_present():
    """Whether the kernel source ships here (not in a remote-code copy of the operator layer).
    Looked up once; later calls read a global (also what torch.compile traces)."""
    global _sources_present
    if _sources_present is None:
        try:
            _sources_present = os.path.isfile(os.path.join(_cuda.sources_dir(), SOURCE))
        except Exception:
            _sources_present = False
    return _sources_present


def unsupported_reason(op, **tensors):
    """None if this backend runs ``op`` on these tensors, else why not."""
    if op not in OPS:
        return f"the cpu backend has no {op} kernel"
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor):
            if t.device.type != "cpu":
                return "the cpu backend needs CPU tensors"
            if t.dtype not in SUPPORTED_DTYPES:
                return f"the cpu backend computes in float32 or float64; {name} is {t.dtype}"
    return None


# ---------------------------------------------------------------------------- calling

def _ptr(x):
    return ctypes.c_void_p(x.data_ptr()) if x is not None else None


def _threads(work):
    return torch.get_num_threads() if work >= _PARALLEL_WORK else 1


def _decay(w, dtype):
    """exp(w) with a contiguous last dimension, and its (b, t, h) strides. An expanded decay
    (RWKV-5's constant one) stays a stride-0 view: exp of the small tensor only."""
    base = w
    if w.stride(0) == 0 and w.stride(1) == 0:
        base = w[:1, :1]
    ew = torch.exp(base.to(dtype)).contiguous()
    ew = ew.expand(w.shape) if base is not w else ew
    return ew, ew.stride()[:3]


def _call(name, dtype, *args):
    sfx = "f64" if dtype == torch.float64 else "f32"
    if getattr(load(), f"rwkv_hf_{name}_{sfx}")(*args) != 0:
        raise MemoryError(f"rwkv_hf cpu backend: {name} could not allocate its scratch buffers")


def _as(x, dtype):
    """x in dtype with a contiguous layout (itself when it already is)."""
    if x.dtype != dtype:
        x = x.to(dtype)
    return x if x.is_contiguous() else x.contiguous()


def _contig(xs, dtype):
    return [None if x is None else _as(x, dtype) for x in xs]


def _snapshots(save, B, H, T, K, V, dt):
    """The state before every kChunk-th token, kept for the backward (an empty tensor if not)."""
    return torch.empty(B, H, -(-T // _CHUNK), K, V, dtype=dt) if save else torch.empty(0, dtype=dt)


def _matrix_inputs(rkv, extras, w):
    """A matrix-state kernel's inputs: r, k, v and ``extras`` contiguous in r's dtype, exp(w)
    and its strides, and the sizes (B, T, H, K, V)."""
    dt = rkv[0].dtype
    r, k, v = _contig(rkv, dt)
    ew, ews = _decay(w, dt)
    return (r, k, v), _contig(extras, dt), ew, ews, (*r.shape, v.shape[-1])


def _forward(name, rkv, extras, w, state, save, flags=(), work=1):
    """Run a matrix-state forward kernel (argument order: r, k, v, the decay, ``extras``, the
    initial state, then the outputs); return y, the final state and the snapshots the backward
    needs (empty unless ``save``)."""
    (r, k, v), extras, ew, ews, (B, T, H, K, V) = _matrix_inputs(rkv, extras, w)
    dt = r.dtype
    S0 = _as(state, dt)
    S = torch.empty(B, H, K, V, dtype=dt)
    y = torch.empty(B, T, H, V, dtype=dt)
    snaps = _snapshots(save, B, H, T, K, V, dt)
    _call(name, dt, B, T, H, K, V, *ews, *flags,
          *map(_ptr, (r, k, v, ew, *extras, S0, S, y, snaps if save else None)),
          _threads(work * B * H * T * K * V))
    return y, S, snaps


def _backward(name, rkv, extras, w, snaps, gy, gS, extra_grads, flags=(), work=1):
    """Run a matrix-state backward kernel (argument order: r, k, v, the decay, ``extras``, the
    snapshots, gy, gS, then the gradients of r, k, v, w, ``extras`` (``extra_grads``, allocated
    by the caller) and the initial state); return gr, gk, gv, gw and g_state in the kernel's
    dtype. exp(w) is recomputed rather than kept from the forward: one exp of the decay."""
    (r, k, v), extras, ew, ews, (B, T, H, K, V) = _matrix_inputs(rkv, extras, w)
    dt = r.dtype
    if tuple(snaps.shape) != (B, H, -(-T // _CHUNK), K, V) or snaps.dtype != dt:
        raise ValueError(f"rwkv_hf cpu backend: {name} needs the forward's snapshots [B, H, T/{_CHUNK}, K, V] "
                         f"in {dt} (a forward run with save=True), got {list(snaps.shape)} {snaps.dtype}")
    gy, gS = _as(gy, dt), _as(gS, dt)
    gr, gk, gv, gw, gs0 = (torch.empty_like(r), torch.empty_like(r), torch.empty_like(v),
                           torch.empty(B, T, H, K, dtype=dt), torch.empty_like(gS))
    _call(name, dt, B, T, H, K, V, *ews, *flags,
          *map(_ptr, (r, k, v, ew, *extras, snaps, gy, gS, gr, gk, gv, gw, *extra_grads, gs0)),
          _threads(work * B * H * T * K * V))
    return gr, gk, gv, gw, gs0


def _per_channel(name, k, v, w, u, state):
    dt = k.dtype
    k, v, w, u = _contig((k, v, w, u), dt)
    B, T, C = k.shape
    S = state.to(dt).contiguous().clone()
    y = torch.empty(B, T, C, dtype=dt)
    _call(name, dt, B, T, C, *map(_ptr, (k, v, w, u, S, y)), _threads(B * T * C * 64))
    return y, S


# ---------------------------------------------------------------------------- torch.library ops
# Each kernel entry point is also a custom operator (rwkv_hf::cpu_*, see custom_ops) with a
# shape-only ("fake") implementation, which the autograd Functions below call while
# torch.compile traces, and the implementation itself otherwise.

def _wkv6_forward(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Optional[Tensor], state: Tensor,
                  reverse: bool, save: bool) -> tuple[Tensor, Tensor, Tensor]:
    """RWKV-5/6 forward (``reverse``: from the last token, without ``u``) -> y, S, snapshots."""
    return _forward("wkv6_forward", (r, k, v), (u,), w, state, save, flags=(int(reverse),))


def _wkv6_backward(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Optional[Tensor], snaps: Tensor,
                   gy: Tensor, gS: Tensor, reverse: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> gr, gk, gv, gw, gu (empty without ``u``), g_state."""
    B, _, H, K = r.shape
    gu = torch.empty(B, H, K, dtype=r.dtype) if u is not None else None  # a row per batch: summed here
    gr, gk, gv, gw, gs0 = _backward("wkv6_backward", (r, k, v), (u,), w, snaps, gy, gS, (gu,),
                                    flags=(int(reverse),))
    return gr, gk, gv, gw, (gu.sum(0) if u is not None else r.new_empty(0)), gs0


def _wkv7_forward(r: Tensor, k: Tensor, v: Tensor, w: Tensor, a: Tensor, b: Tensor, state: Tensor,
                  save: bool) -> tuple[Tensor, Tensor, Tensor]:
    """RWKV-7 forward -> y, S, snapshots."""
    return _forward("wkv7_forward", (r, k, v), (a, b), w, state, save, work=2)


def _wkv7_backward(r: Tensor, k: Tensor, v: Tensor, w: Tensor, a: Tensor, b: Tensor, snaps: Tensor,
                   gy: Tensor, gS: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> gr, gk, gv, gw, ga, gb, g_state."""
    ga, gb = torch.empty(r.shape, dtype=r.dtype), torch.empty(r.shape, dtype=r.dtype)  # contiguous
    gr, gk, gv, gw, gs0 = _backward("wkv7_backward", (r, k, v), (a, b), w, snaps, gy, gS, (ga, gb), work=2)
    return gr, gk, gv, gw, ga, gb, gs0


def _wkv4_forward(k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: Tensor,
                  bidirectional: bool) -> tuple[Tensor, Tensor]:
    """RWKV-4 / bidirectional v4 forward -> y, final state."""
    return _per_channel("bi_wkv4_forward" if bidirectional else "wkv4_forward", k, v, w, u, state)


def _wkv4_backward(k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: Tensor, gy: Tensor, gS: Tensor,
                   bidirectional: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> gk, gv, gw, gu, g_state, in k's dtype. The kernel runs the scan again from the initial
    ``state`` (nothing of size [B, T, C] is kept from the forward)."""
    dt = k.dtype
    k, v, w, u, gy = _contig((k, v, w, u, gy), dt)
    state, gS = _as(state, dt), _as(gS, dt)
    B, T, C = k.shape
    gk, gv, gs0 = torch.empty_like(k), torch.empty_like(v), torch.empty_like(state)
    gw, gu = torch.empty(B, C, dtype=dt), torch.empty(B, C, dtype=dt)  # a row per batch: summed here
    _call("bi_wkv4_backward" if bidirectional else "wkv4_backward", dt, B, T, C,
          *map(_ptr, (k, v, w, u, state, gy, gS, gk, gv, gw, gu, gs0)), _threads(B * T * C * 64))
    return gk, gv, gw.sum(0, dtype=torch.float64).to(dt), gu.sum(0, dtype=torch.float64).to(dt), gs0


def _point_forward(k: Tensor, v: Tensor, w: Tensor, state: Tensor, save: bool) -> tuple[Tensor, Tensor, Tensor]:
    """PointRWKV's scans, both directions -> A [2, B, T, H, K] (A[0] left to right, A[1] right to
    left), final states [B, 2, H, K, K], snapshots [2, B, H, T/64, K, K] (empty unless ``save``)."""
    dt = k.dtype
    k, v = _contig((k, v), dt)
    ew = torch.exp(w.to(dt)).contiguous()
    B, T, H, K = k.shape
    S0 = _as(state, dt)
    S, A = torch.empty(B, 2, H, K, K, dtype=dt), torch.empty(2, B, T, H, K, dtype=dt)
    snaps = torch.empty(2, B, H, -(-T // _CHUNK), K, K, dtype=dt) if save else torch.empty(0, dtype=dt)
    _call("point_forward", dt, B, T, H, K, *map(_ptr, (k, v, ew, S0, S, A, snaps if save else None)),
          _threads(2 * B * H * T * K * K))
    return A, S, snaps


def _point_backward(k: Tensor, v: Tensor, w: Tensor, snaps: Tensor, gA: Tensor,
                    gS: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> gk, gv, gw (both directions' sums), g_state; ``gS`` None: the final states are off the
    loss (zero)."""
    dt = k.dtype
    k, v, gA = _contig((k, v, gA), dt)
    ew = torch.exp(w.to(dt)).contiguous()
    B, T, H, K = k.shape
    if tuple(snaps.shape) != (2, B, H, -(-T // _CHUNK), K, K) or snaps.dtype != dt:
        raise ValueError(f"rwkv_hf cpu backend: point_backward needs the forward's snapshots "
                         f"[2, B, H, T/{_CHUNK}, K, K] in {dt}, got {list(snaps.shape)} {snaps.dtype}")
    gS = None if gS is None else _as(gS, dt)
    gk, gv, gw = (torch.empty(2, B, T, H, K, dtype=dt) for _ in range(3))
    gs0 = torch.empty(B, 2, H, K, K, dtype=dt)
    _call("point_backward", dt, B, T, H, K, *map(_ptr, (k, v, ew, snaps, gA, gS, gk, gv, gw, gs0)),
          _threads(2 * B * H * T * K * K))
    return gk.sum(0), gv.sum(0), gw.sum(0), gs0


def _fps(points: Tensor, n: int) -> Tensor:
    B, N, _ = points.shape
    points = _as(points, points.dtype)
    idx = torch.empty(B, n, dtype=torch.long)
    _call("fps", points.dtype, B, N, n, _ptr(points), _ptr(idx), _threads(B * N * n))
    return idx


# Fakes: the shapes and dtypes (the kernels' dtype, r's or k's) the implementations return.

def _matrix_fake(r, k, v, w, *rest):
    """A forward's y, S and snapshots (``save`` is the last argument)."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    snaps = r.new_empty(B, H, -(-T // _CHUNK), K, V) if rest[-1] else r.new_empty(0)
    return r.new_empty(B, T, H, V), r.new_empty(B, H, K, V), snaps


def _wkv6_backward_fake(r, k, v, w, u, snaps, gy, gS, reverse):
    gu = r.new_empty(u.shape) if u is not None else r.new_empty(0)
    return (r.new_empty(r.shape), r.new_empty(r.shape), r.new_empty(v.shape), r.new_empty(r.shape), gu,
            r.new_empty(gS.shape))


def _wkv7_backward_fake(r, k, v, w, a, b, snaps, gy, gS):
    return (r.new_empty(r.shape), r.new_empty(r.shape), r.new_empty(v.shape), r.new_empty(r.shape),
            r.new_empty(r.shape), r.new_empty(r.shape), r.new_empty(gS.shape))


def _point_forward_fake(k, v, w, state, save):
    B, T, H, K = k.shape
    snaps = k.new_empty(2, B, H, -(-T // _CHUNK), K, K) if save else k.new_empty(0)
    return k.new_empty(2, B, T, H, K), k.new_empty(B, 2, H, K, K), snaps


def _point_backward_fake(k, v, w, snaps, gA, gS):
    B, T, H, K = k.shape
    return k.new_empty(k.shape), k.new_empty(k.shape), k.new_empty(k.shape), k.new_empty(B, 2, H, K, K)


def _wkv4_forward_fake(k, v, w, u, state, bidirectional):
    return k.new_empty(k.shape), k.new_empty(state.shape)


def _wkv4_backward_fake(k, v, w, u, state, gy, gS, bidirectional):
    return (k.new_empty(k.shape), k.new_empty(v.shape), k.new_empty(w.shape), k.new_empty(u.shape),
            k.new_empty(state.shape))


_wkv6_forward_op = _custom_ops.register("cpu", _wkv6_forward, _matrix_fake)
_wkv6_backward_op = _custom_ops.register("cpu", _wkv6_backward, _wkv6_backward_fake)
_wkv7_forward_op = _custom_ops.register("cpu", _wkv7_forward, _matrix_fake)
_wkv7_backward_op = _custom_ops.register("cpu", _wkv7_backward, _wkv7_backward_fake)
_point_forward_op = _custom_ops.register("cpu", _point_forward, _point_forward_fake)
_point_backward_op = _custom_ops.register("cpu", _point_backward, _point_backward_fake)
_wkv4_forward_op = _custom_ops.register("cpu", _wkv4_forward, _wkv4_forward_fake)
_wkv4_backward_op = _custom_ops.register("cpu", _wkv4_backward, _wkv4_backward_fake)
_fps_op = _custom_ops.register("cpu", _fps, _cuda._fps_fake)  # indices [B, n] on either backend
_traced = _custom_ops.traced


def _incoming(gy, gS, v, s_shape, like):
    """The output gradients, zeros for an output that did not reach the loss."""
    return (like.new_zeros(v.shape) if gy is None else gy), (like.new_zeros(s_shape) if gS is None else gS)


class _Wkv6(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, k, v, w, u, state, reverse):
        y, S, snaps = _traced(_wkv6_forward_op, _wkv6_forward)(r, k, v, w, u, state, reverse, True)
        ctx.save_for_backward(r, k, v, w, u, snaps)
        ctx.meta = (reverse, state.shape, state.dtype, w.dtype)
        return y, S

    @staticmethod
    def backward(ctx, gy, gS):
        r, k, v, w, u, snaps = ctx.saved_tensors
        reverse, s_shape, s_dtype, w_dtype = ctx.meta
        gy, gS = _incoming(gy, gS, v, s_shape, r)
        gr, gk, gv, gw, gu, gs0 = _traced(_wkv6_backward_op, _wkv6_backward)(r, k, v, w, u, snaps, gy, gS, reverse)
        return gr, gk, gv, gw.to(w_dtype), (gu if u is not None else None), gs0.to(s_dtype), None


class _PerChannel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, k, v, w, u, state, bidirectional):
        y, S = _traced(_wkv4_forward_op, _wkv4_forward)(k, v, w, u, state, bidirectional)
        ctx.save_for_backward(k, v, w, u, state)  # the backward runs the scan again from state
        ctx.bidirectional = bidirectional
        return y, S

    @staticmethod
    def backward(ctx, gy, gS):
        k, v, w, u, state = ctx.saved_tensors
        gy, gS = _incoming(gy, gS, v, state.shape, k)
        grads = _traced(_wkv4_backward_op, _wkv4_backward)(k, v, w, u, state, gy, gS, ctx.bidirectional)
        return (*(g.to(x.dtype) for g, x in zip(grads, (k, v, w, u, state))), None)


class _Wkv7(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, k, v, w, a, b, state):
        y, S, snaps = _traced(_wkv7_forward_op, _wkv7_forward)(r, k, v, w, a, b, state, True)
        ctx.save_for_backward(r, k, v, w, a, b, snaps)
        ctx.meta = (state.shape, state.dtype, w.dtype)
        return y, S

    @staticmethod
    def backward(ctx, gy, gS):
        r, k, v, w, a, b, snaps = ctx.saved_tensors
        s_shape, s_dtype, w_dtype = ctx.meta
        gy, gS = _incoming(gy, gS, v, s_shape, r)
        gr, gk, gv, gw, ga, gb, gs0 = _traced(_wkv7_backward_op, _wkv7_backward)(r, k, v, w, a, b, snaps, gy, gS)
        return gr, gk, gv, gw.to(w_dtype), ga, gb, gs0.to(s_dtype)


class _Point(torch.autograd.Function):
    @staticmethod
    def forward(ctx, k, v, w, state):
        A, S, snaps = _traced(_point_forward_op, _point_forward)(k, v, w, state, True)
        ctx.save_for_backward(k, v, w, snaps)
        ctx.meta = (state.dtype, w.dtype)
        ctx.set_materialize_grads(False)  # final states off the loss: the kernel starts from zero
        return A, S

    @staticmethod
    def backward(ctx, gA, gS):
        k, v, w, snaps = ctx.saved_tensors
        s_dtype, w_dtype = ctx.meta
        if gA is None:
            B, T, H, K = k.shape
            gA = k.new_zeros(2, B, T, H, K)
        gk, gv, gw, gs0 = _traced(_point_backward_op, _point_backward)(k, v, w, snaps, gA, gS)
        return gk, gv, gw.to(w_dtype), gs0.to(s_dtype)


def _needs_grad(*xs):
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in xs)


# ---------------------------------------------------------------------------- backend API

def wkv4(k, v, w, u, state):
    """RWKV-4: k, v [B, T, C]; w, u [C]; state [B, 3, C] -> (y [B, T, C], final state)."""
    return _per_channel_op(False, k, v, w, u, state)


def bi_wkv4(k, v, w, u, state):
    """Bidirectional v4: k, v [B, T, C]; w, u [C]; state [B, 2, 3, C] -> (y, final state)."""
    return _per_channel_op(True, k, v, w, u, state)


def _per_channel_op(bidirectional, k, v, w, u, state):
    if _needs_grad(k, v, w, u, state):
        return _PerChannel.apply(k, v, w, u, state, bidirectional)
    return _traced(_wkv4_forward_op, _wkv4_forward)(k, v, w, u, state, bidirectional)


def wkv6(r, k, v, w, u, state):
    """RWKV-5/6: r, k, w [B, T, H, K]; v [B, T, H, V]; u [H, K]; state [B, H, K, V]."""
    return _wkv6(r, k, v, w, u, state, False)


def wkv6_reversed(r, k, v, w, state):
    """The right-to-left half of ``bi_wkv6``: wkv6 without the bonus, scanning from the last token
    to the first (y_t reads the state of the tokens after t), without flipping any tensor."""
    return _wkv6(r, k, v, w, None, state, True)


def _wkv6(r, k, v, w, u, state, reverse):
    if _needs_grad(r, k, v, w, u, state):
        return _Wkv6.apply(r, k, v, w, u, state, reverse)
    return _traced(_wkv6_forward_op, _wkv6_forward)(r, k, v, w, u, state, reverse, False)[:2]


def wkv7(r, k, v, w, a, b, state):
    """RWKV-7: r, k, w, a, b [B, T, H, K]; v [B, T, H, V]; state [B, H, K, V]."""
    if _needs_grad(r, k, v, w, a, b, state):
        return _Wkv7.apply(r, k, v, w, a, b, state)
    return _traced(_wkv7_forward_op, _wkv7_forward)(r, k, v, w, a, b, state, False)[:2]


def point_scan(k, v, w, state):
    """PointRWKV's two one-way scans (see ``rwkv_hf.ops.point_wkv``): k, v, w [B, T, H, K]; state
    [B, 2, H, K, K] -> (A [2, B, T, H, K], final states [B, 2, H, K, K]), A[0]_t = L_{t-1} k_t
    from the left, A[1]_t = R_{t+1} k_t from the right."""
    if _needs_grad(k, v, w, state):
        return _Point.apply(k, v, w, state)
    return _traced(_point_forward_op, _point_forward)(k, v, w, state, False)[:2]


def farthest_point_sample(points, n):
    """PointRWKV's farthest point sampling (see ``rwkv_hf.ops.farthest_point_sample``): points
    [B, N, 3] float32 or float64, finite, 1 <= n <= N -> indices [B, n] (int64), from point 0."""
    return _traced(_fps_op, _fps)(points, n)
