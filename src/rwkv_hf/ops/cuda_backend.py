"""CUDA backend of ``rwkv_hf.ops``: the loader of the WKV extension and its operators.

The extension's sources ship as ``rwkv_hf.cuda_ext`` (the repository's ``cuda_ext/``). They
are compiled on first use for the visible GPU (or ``TORCH_CUDA_ARCH_LIST``) and cached under
``$RWKV_HF_CUDA_CACHE`` (default ``~/.cache/rwkv_hf/cuda``) in a directory keyed by the Python,
torch and CUDA versions, a hash of the sources and the architectures. :func:`build` compiles
ahead of time, without a GPU, for a list of architectures; :func:`load` then finds that build.

Backend functions (same signatures and results as ``reference.py``; inputs validated by the
dispatcher): :func:`wkv4`, :func:`bi_wkv4`, :func:`wkv5` (its decay [H, K] read in place),
:func:`wkv6`, :func:`bi_wkv6` (both directions, one rounding) and :func:`wkv7`; for PointRWKV's
``point_wkv`` the scans only, :func:`point_scan` (``A`` of both directions, float32, from which
the ops layer forms ``y``), and PointRWKV's sampling, :func:`farthest_point_sample` (float32
or float64 points). Per-token inputs
may be float32, bfloat16 or float16 (``y`` comes back in that dtype, rounded once). The
matrix-state ops' log-decay ``w`` (point_scan's too) is read as it is in float32 or in the
activations' dtype (its gradient comes back in it; no float32 copy); the other decays and ``u``
are used in float32.
States are float32, accumulation is float32 (float64 for the running sums of the per-channel
ops). Gradients reach every tensor input, the initial state
included, from both outputs. Head sizes K = V in {16, 32, 64, 128} (point_scan: also 48 and 96);
any C for the per-channel ops. :func:`unsupported_reason` tells the dispatcher when to fall back. Each kernel entry point
is also a ``torch.library`` custom operator (``torch.ops.rwkv_hf.cuda_*``, with a fake
implementation), which the autograd Functions call while torch.compile traces.

Importing this module never raises and never compiles; :func:`available` says whether the
backend can run here, and why not.
"""
import glob
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import threading
import time

import torch
from torch import Tensor

from . import custom_ops as _custom_ops

__all__ = ["wkv4", "bi_wkv4", "wkv5", "wkv6", "bi_wkv6", "wkv7", "point_scan", "farthest_point_sample",
           "available", "load",
           "build", "find_cuda_home", "sources_dir", "unsupported_reason", "SUPPORTED_HEAD_SIZES",
           "POINT_HEAD_SIZES"]

SUPPORTED_HEAD_SIZES = (16, 32, 64, 128)
# point_wkv's kernels also take PointRWKV's 48 (384 channels in 8 heads, as released) and 96.
POINT_HEAD_SIZES = (16, 32, 48, 64, 96, 128)
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SOURCES = ("wkv.cpp", "wkv_host.cpp", "wkv4.cu", "wkv5.cu", "wkv6.cu", "wkv7.cu", "point_wkv.cu", "fps.cu")
HEADERS = ("wkv_common.h", "wkv_launch.h", "wkv_host.h", "wkv6.cuh")
CACHE_ENV = "RWKV_HF_CUDA_CACHE"
CHUNK_ENV = "RWKV_HF_CUDA_CHUNK"
SNAP = 64  # tokens per state snapshot: kSnap of wkv_launch.h
# Blocks of the matrix-state kernels one multiprocessor holds at once for N = 64: the forward
# kernels and B1 run 128 threads per block at up to 167 registers per thread (ptxas, sm_90:
# RWKV-7 in float32, or with a float32 decay), so 3 fit in 64K registers. (With the decay in
# bf16, as the benchmarks pass it, RWKV-7's forward and B1 stay at 128 registers or fewer: 4
# would fit.) The chunk-parallel form is sized for one such wave: 3 blocks, or 4 when the
# activations and the decay are 16-bit. On the H200 (2026-11-28, evening; bf16, B=1 T=16384
# H=32) the chunks for 4 (1024 tokens) beat those for 3 (1408): RWKV-7 1.639 / 4.340 ms against
# 1.681 / 4.603 (fwd / fwd+bwd), RWKV-6 0.887 / 2.761 against 0.938 / 2.836.
_RESIDENT_PER_SM = 3
_RESIDENT_PER_SM_16BIT = 4
# Per-channel kernels (wkv4, bi_wkv4): threads to aim for per multiprocessor, the shortest
# chunk, and the chunks a short sequence may have at up to half that length (see
# v4_chunk_length).
_V4_THREADS_PER_SM = 4096
_V4_MIN_CHUNK = 64
_V4_SHORT_CHUNKS = 6
_BUILD_INFO = "build.json"

logger = logging.getLogger(__name__)
_lock = threading.RLock()
_ext = None
_load_error = None


# ---------------------------------------------------------------------------- locating things

def sources_dir():
    """Directory of the extension's sources: the installed package ``rwkv_hf.cuda_ext`` if
    importable, else the repository's ``cuda_ext/`` next to ``src/``."""
    try:
        spec = importlib.util.find_spec("rwkv_hf.cuda_ext")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for d in spec.submodule_search_locations:
            if all(os.path.isfile(os.path.join(d, f)) for f in SOURCES):
                return os.path.abspath(d)
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.normpath(os.path.join(here, "..", "..", "..", "cuda_ext"))
    if all(os.path.isfile(os.path.join(repo, f)) for f in SOURCES):
        return repo
    raise FileNotFoundError("rwkv_hf CUDA sources not found (neither the package rwkv_hf.cuda_ext "
                            f"nor {repo})")


def _resolve_nvcc(path, depth=0):
    """Follow symlinks and small wrapper scripts (``exec /real/bin/nvcc "$@"``) to the real nvcc."""
    path = os.path.realpath(path)
    if depth > 5:
        return path
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return path
    if not head.startswith(b"#!"):
        return path
    text = head.decode("utf-8", "replace")
    for cand in re.findall(r"(/[^\s\"';&|]*/nvcc)\b", text):
        if os.path.isfile(cand) and os.path.realpath(cand) != path:
            return _resolve_nvcc(cand, depth + 1)
    return path


def find_cuda_home():
    """The CUDA toolkit root: $CUDA_HOME (or $CUDA_PATH), else the directory above the real
    ``nvcc`` on PATH (through symlinks and wrapper scripts), else /usr/local/cuda; None if none
    holds bin/nvcc."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        d = os.environ.get(var)
        if d and os.path.isfile(os.path.join(d, "bin", "nvcc")):
            return os.path.abspath(d)
    nvcc = shutil.which("nvcc")
    if nvcc:
        d = os.path.dirname(os.path.dirname(_resolve_nvcc(nvcc)))
        if os.path.isfile(os.path.join(d, "bin", "nvcc")):
            return d
    for d in ("/usr/local/cuda",) + tuple(sorted(glob.glob("/usr/local/cuda-*"), reverse=True)):
        if os.path.isfile(os.path.join(d, "bin", "nvcc")):
            return d
    return None


def cache_root(env=CACHE_ENV, leaf="cuda"):
    """Where compiled builds live: ``$env``, else ``$XDG_CACHE_HOME/rwkv_hf/<leaf>`` (default
    ``~/.cache/rwkv_hf/<leaf>``)."""
    d = os.environ.get(env)
    if d:
        return os.path.abspath(os.path.expanduser(d))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rwkv_hf", leaf)


def _source_hash(src):
    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        h.update(name.encode())
        with open(os.path.join(src, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def _key(src):
    """Cache directory name shared by every architecture build of these sources."""
    key = (f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}"
           f"-cuda{torch.version.cuda}-src{_source_hash(src)}")
    return re.sub(r"[^A-Za-z0-9._-]", "_", key)


def _norm_archs(arch_list):
    if isinstance(arch_list, str):
        arch_list = re.split(r"[;,\s]+", arch_list)
    archs = []
    for a in arch_list:
        a = str(a).strip()
        if not a:
            continue
        if not re.fullmatch(r"\d+\.\d+a?(\+PTX)?", a):
            raise ValueError(f"bad CUDA architecture {a!r} (expected e.g. '8.0', '9.0', '9.0+PTX')")
        if a not in archs:
            archs.append(a)
    if not archs:
        raise ValueError("empty CUDA architecture list")
    return archs


def _arch_tag(archs):
    return "sm_" + "_".join(a.replace(".", "").replace("+PTX", "ptx") for a in archs)


def _module_name(key, archs):
    return "rwkv_hf_wkv_" + hashlib.sha256((key + ";".join(archs)).encode()).hexdigest()[:10]


def _device_archs():
    env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        return _norm_archs(env)
    archs = []
    for i in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(i)
        a = f"{major}.{minor}"
        if a not in archs:
            archs.append(a)
    return archs


def _covers(built, needed):
    """Does a build for the architectures ``built`` run on every one of ``needed``?"""
    def base(a):
        return a.split("+")[0].rstrip("a")

    def ver(a):
        major, minor = base(a).split(".")
        return int(major), int(minor)

    return all(any(base(b) == base(n) or (b.endswith("+PTX") and ver(b) <= ver(n)) for b in built)
               for n in needed)


# ---------------------------------------------------------------------------- compiling

def _ensure_ninja():
    if shutil.which("ninja"):
        return
    dirs = [os.path.dirname(sys.executable)]
    try:
        import ninja  # the PyPI package ships the binary
        dirs.insert(0, ninja.BIN_DIR)
    except Exception:
        pass
    for d in dirs:
        if os.path.isfile(os.path.join(d, "ninja")):
            os.environ["PATH"] = d + os.pathsep + os.environ.get("PATH", "")
            return
    raise RuntimeError("ninja not found (pip install ninja): torch needs it to compile extensions")


def _import_built(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _compile(archs, verbose=False):
    """Compile the extension for ``archs``; return (module, path of the built module)."""
    src = sources_dir()
    key = _key(src)
    name = _module_name(key, archs)
    build_dir = os.path.join(cache_root(), key, _arch_tag(archs))
    os.makedirs(build_dir, exist_ok=True)
    cuda_home = find_cuda_home()
    if cuda_home is None:
        raise RuntimeError("nvcc not found: install the CUDA toolkit or set CUDA_HOME")
    _ensure_ninja()
    from torch.utils import cpp_extension

    saved_env = {k: os.environ.get(k) for k in ("CUDA_HOME", "TORCH_CUDA_ARCH_LIST")}
    saved_home = cpp_extension.CUDA_HOME
    os.environ["CUDA_HOME"] = cuda_home
    os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(archs)
    cpp_extension.CUDA_HOME = cuda_home  # torch guesses it once at import; the guess can be wrong
    try:
        mod = cpp_extension.load(
            name=name,
            sources=[os.path.join(src, f) for f in SOURCES],
            extra_include_paths=[src],
            extra_cflags=["-O3"],
            # No --use_fast_math: exact expf keeps float32 results within 1e-5 of float64.
            extra_cuda_cflags=["-O3", "-lineinfo"],
            build_directory=build_dir,
            verbose=verbose,
            with_cuda=True,
        )
    finally:
        cpp_extension.CUDA_HOME = saved_home
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    path = getattr(mod, "__file__", None) or os.path.join(build_dir, name + ".so")
    with open(os.path.join(build_dir, _BUILD_INFO), "w") as f:
        json.dump({"name": name, "archs": archs, "module": os.path.basename(path),
                   "torch": torch.__version__, "cuda": torch.version.cuda}, f)
    return mod, path


def build(arch_list=("8.0", "9.0"), verbose=False):
    """Compile the extension ahead of time (no GPU needed) for ``arch_list``; return the path of
    the built module. :func:`load` uses this build on any GPU whose architecture it covers."""
    archs = _norm_archs(arch_list)
    with _lock:
        _, path = _compile(archs, verbose=verbose)
    return path


def _find_prebuilt(needed):
    try:
        src = sources_dir()
        root = os.path.join(cache_root(), _key(src))
    except Exception:
        return None
    for info_path in sorted(glob.glob(os.path.join(root, "*", _BUILD_INFO))):
        try:
            with open(info_path) as f:
                info = json.load(f)
            path = os.path.join(os.path.dirname(info_path), info["module"])
            if os.path.isfile(path) and _covers(info["archs"], needed):
                return info["name"], path
        except Exception:
            continue
    return None


def load(verbose=False):
    """The compiled extension module, built on first use for the visible GPU's architecture
    (or ``TORCH_CUDA_ARCH_LIST``), or found among earlier builds. Raises RuntimeError."""
    global _ext, _load_error
    if _ext is not None:
        return _ext
    with _lock:
        if _ext is not None:
            return _ext
        if _load_error is not None:
            raise RuntimeError(_load_error)
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device visible to torch")
        try:
            needed = _device_archs()
            found = _find_prebuilt(needed)
            mod = None
            if found is not None:
                try:
                    mod = _import_built(*found)
                except Exception:
                    mod = None
            if mod is None:
                # Tens of seconds with no output otherwise; once per sources, torch and arch.
                logger.warning("rwkv_hf: compiling the WKV CUDA extension for %s (first use; "
                               "about 30 s with 16 CPU cores, 1-2 min with 2; cached under %s)",
                               _arch_tag(needed), cache_root())
                start = time.time()
                mod, _ = _compile(needed, verbose=verbose)
                logger.info("rwkv_hf: compiled the WKV CUDA extension in %.0f s", time.time() - start)
            _ext = mod
        except Exception as e:  # remember: do not recompile on every call
            _load_error = _summarize(e)
            raise RuntimeError(_load_error) from e
    return _ext


def _summarize(e):
    """One line saying why the extension is unavailable: the compiler's error lines when there
    are any (ninja's output is long), else the whole message on one line."""
    msg = str(e)
    if "nvcc not found" in msg or "ninja not found" in msg or "no CUDA device" in msg:
        return msg
    lines = [l.strip() for l in msg.splitlines() if re.search(r"\berror\b", l, re.I)]
    # ninja's summary line ("Error building extension ...") says less than the compiler's.
    specific = [l for l in lines if not l.startswith("Error building extension")]
    head = "; ".join((specific or lines)[:4]) if lines else " ".join(msg.split()) or repr(e)
    return f"compiling the rwkv_hf CUDA extension failed: {head[:800]}"


def available():
    """(True, 'ok') if CUDA is available and the extension loads (compiling it if needed),
    else (False, why not)."""
    try:
        if not torch.cuda.is_available():
            return False, "no CUDA device visible to torch"
        load()
        return True, "ok"
    except Exception as e:
        return False, str(e)


# ---------------------------------------------------------------------------- checks

def unsupported_reason(op, **tensors):
    """None if this backend runs ``op`` on these tensors, else why not (so the dispatcher can fall
    back). ``op`` in wkv4, bi_wkv4, wkv5, wkv6, bi_wkv6, wkv7, point_wkv; tensors by their
    argument names."""
    xs = [t for t in tensors.values() if isinstance(t, torch.Tensor)]
    if not xs or not all(t.is_cuda for t in xs):
        return "the CUDA backend needs CUDA tensors"
    if op == "farthest_point_sample":  # the dispatcher passes float32 or float64 points
        return None
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.dtype not in SUPPORTED_DTYPES:
            return f"the CUDA backend computes in float32; {name} is {t.dtype}"
    if op in ("wkv6", "wkv5", "wkv7", "bi_wkv6", "point_wkv"):
        r, v = tensors.get("r"), tensors.get("v")
        if r is not None and v is not None:
            K, V = r.shape[-1], v.shape[-1]
            sizes = _head_sizes(op)
            if K != V or K not in sizes:
                return f"the CUDA backend supports head sizes K = V in {sizes} for {op}, got K={K}, V={V}"
    return None


def _head_sizes(op):
    return POINT_HEAD_SIZES if op == "point_wkv" else SUPPORTED_HEAD_SIZES


def _head_size(op, r, v):
    K, V = r.shape[-1], v.shape[-1]
    sizes = _head_sizes(op)
    if K != V or K not in sizes:
        raise ValueError(f"{op} (cuda backend): head sizes K = V in {sizes} are "
                         f"supported, got K={K}, V={V}; use backend='torch'")
    return K


def _act_dtype(op, *xs):
    if not all(x.is_cuda for x in xs):
        raise ValueError(f"{op} (cuda backend): inputs must be CUDA tensors")
    dt = xs[0].dtype
    if dt not in SUPPORTED_DTYPES:
        raise ValueError(f"{op} (cuda backend): per-token inputs must be float32, bfloat16 or "
                         f"float16, got {dt}; use backend='torch' for float64")
    return dt


_SM_COUNTS = {}


def _sm_count(device):
    # Cached: get_device_properties costs microseconds, and the chunk choice runs on every call
    # (every layer of every generation step).
    device = torch.device(device)
    index = torch.cuda.current_device() if device.index is None else device.index
    n = _SM_COUNTS.get(index)
    if n is None:
        n = _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return n


def _chunk_override():
    """The chunk length set by ``$RWKV_HF_CUDA_CHUNK`` (tokens, 0: one chunk), None if unset."""
    env = os.environ.get(CHUNK_ENV, "").strip()
    if not env:
        return None
    try:
        chunk = int(env)
    except ValueError:
        chunk = -1
    if chunk < 0:
        raise ValueError(f"${CHUNK_ENV} must be a number of tokens >= 0, got {env!r}")
    return chunk


def chunk_length(B, H, T, device, narrow=False):
    """Tokens per chunk of the matrix-state kernels' chunk-parallel form (wkv6, wkv7), 0 for
    the sequential form (one pass over T per (batch, head)).

    The sequential form runs B * H blocks, each bound by its multiprocessor's instruction issue
    and shared-memory traffic. When B * H is well under what the GPU holds at once (about
    _RESIDENT_PER_SM blocks per multiprocessor), most multiprocessors idle, and the
    chunk-parallel form (chunks from a zero state in parallel, a short pass over the chunks for
    their start states, the chunks again from those: about 2.4x the work per token, in
    B * H * T / chunk blocks) finishes sooner. Chunks are sized for one wave of resident blocks
    (more of them when ``narrow``: 16-bit activations and decay, fewer registers per thread),
    in multiples of 64 tokens; below 3 chunks per sequence, or 1024 tokens, the sequential form
    is kept. A model of the kernels, not yet a GPU measurement, sets these thresholds
    (gpu_check.py times both forms). ``$RWKV_HF_CUDA_CHUNK`` overrides the choice (0: always
    sequential).
    """
    chunk = _chunk_override()
    if chunk is not None:
        return chunk
    if torch.device(device).type != "cuda":
        return 0
    resident = _RESIDENT_PER_SM_16BIT if narrow else _RESIDENT_PER_SM
    chunks = resident * _sm_count(device) // max(1, B * H)
    if chunks < 3 or T < 16 * SNAP:  # short sequences: not worth three launches
        return 0
    chunk = -(-T // chunks)
    chunk = -(-chunk // SNAP) * SNAP
    return 0 if chunk * 3 > T else chunk


def halves_concurrent(backward, device):
    """Whether bi_wkv6 runs its two scans at once (the right-to-left one on a second CUDA
    stream, the outputs then summed by one more elementwise pass) or one after the other (the
    second adding the first's as it writes): at once in the forward, one after the other in the
    backward. On the H200 (2026-11-28, fp32, (B, T, C) = (64, 196, 192), (64, 196, 768),
    (4, 4096, 768), (1, 16384, 192)), the forward at once took 1.04, 0.82, 0.91 and 0.90 of the
    time one after the other; the backward (forward+backward less forward) took 1.39, 1.03, 0.98
    and 1.20. That run's second stream was a new one of c10's pool per call, whose memory the
    caching allocator could not reuse from call to call (now one stream, ``side_stream`` in
    wkv_host.cpp), which may explain the backward's numbers: gpu_check.py times both."""
    return not backward and torch.device(device).type == "cuda"


def v4_chunk_length(B, C, T, device):
    """Tokens per chunk of the per-channel kernels' scans over time (wkv4, bi_wkv4), 0 for one
    chunk (one thread per (batch, channel) over the whole sequence).

    These kernels run one thread per (batch, chunk, channel), each a chain of dependent
    float64 steps over its chunk, plus a walk over the chunks in order per (batch, channel)
    between the passes. The chunks are sized for about _V4_THREADS_PER_SM threads per
    multiprocessor (twice what one holds, to hide the chains' latency), and at least
    _V4_MIN_CHUNK tokens, so that the walk stays short; a short sequence may still have up to
    _V4_SHORT_CHUNKS chunks of at least half that. On the H200 (2026-11-27 and 11-28, Bi-WKV
    v4, fp32), 64-token chunks beat 32-token ones by 1.10x to 1.18x forward+backward at (4,
    4096, 768) and (1, 16384, 192); at (64, 196, 192), 6 chunks of 33 tokens beat 3 of 66 by
    1.5x forward. ``$RWKV_HF_CUDA_CHUNK`` overrides the choice (tokens per chunk; 0: one
    chunk).
    """
    chunk = _chunk_override()
    if chunk is not None:
        return chunk
    if torch.device(device).type != "cuda":
        return 0
    most = max(T // _V4_MIN_CHUNK, min(_V4_SHORT_CHUNKS, T // (_V4_MIN_CHUNK // 2)))
    chunks = min(-(-_V4_THREADS_PER_SM * _sm_count(device) // max(1, B * C)), most)
    if chunks <= 1:
        return 0
    return -(-T // chunks)


def _c(x, dtype):
    # The common case (nothing to do) without the calls: these run on every step of generation.
    return x if x.dtype == dtype and x.is_contiguous() else x.to(dtype).contiguous()


def _f32(x):
    return _c(x, torch.float32)


def _decay_dtype(w, act_dtype):
    """The dtype the matrix-state kernels read a per-token log-decay in: its own when float32
    or the activations' dtype (no copy), else float32."""
    return w.dtype if w.dtype == act_dtype else torch.float32


def _sum_to(x, dims):
    # Accumulated in float64 inside the reduction: no float64 copy (for wkv5's per-token decay
    # gradient, [B, T, H, K], that copy would be twice the float32 tensor).
    return x.sum(dims, dtype=torch.float64).to(torch.float32)


# ---------------------------------------------------------------------------- torch.library ops
# Each direction of each op is a custom operator (rwkv_hf::cuda_*, see custom_ops) with a
# shape-only ("fake") implementation, which the autograd Functions below call while
# torch.compile traces, and the implementation itself otherwise. The chunk length (chosen from the GPU's size) and whether to keep what the
# backward reads are arguments. Inputs come in any supported dtype: the implementations cast
# them (to the activations' dtype; w, u and states to float32); the Functions give the
# gradients back in the inputs' dtypes.

def _chunks(chunk, T, unit):
    """(tokens per chunk, number of chunks) as the host code's chunk_length rounds ``chunk``."""
    L = max(T, 1) if chunk == 0 or chunk >= T else -(-chunk // unit) * unit
    return L, -(-T // L)


def _v4_inputs(op, k, v, w, u):
    """What the per-channel kernels take: k, v in one dtype, w and u in float32."""
    dt = _act_dtype(op, k, v)
    return _c(k, dt), _c(v, dt), _f32(w), _f32(u)


def _v4_forward(k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: Tensor, chunk: int,
                bidirectional: bool) -> tuple[Tensor, Tensor, Tensor]:
    """RWKV-4 / bidirectional v4 forward -> y, final state, the states entering each chunk."""
    op = "bi_wkv4" if bidirectional else "wkv4"
    y, sT, enter = getattr(load(), op + "_forward")(*_v4_inputs(op, k, v, w, u), _f32(state), chunk)
    return y, sT, enter


def _v4_backward(k: Tensor, v: Tensor, w: Tensor, u: Tensor, enter: Tensor, sT: Tensor, gy: Tensor, gS: Tensor,
                 chunk: int, bidirectional: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> gk, gv, gw, gu, g_state, float32."""
    op = "bi_wkv4" if bidirectional else "wkv4"
    kk, vv, ww, uu = _v4_inputs(op, k, v, w, u)
    gk, gv, gw, gu, gs0 = getattr(load(), op + "_backward")(
        kk, vv, ww, uu, enter, sT, _c(gy, kk.dtype), _f32(gS), chunk)
    return gk, gv, _sum_to(gw, (0, 1)), _sum_to(gu, (0, 1)), gs0


def _v6_inputs(r, k, v, w, u):
    """What the wkv6 kernels take: r, k, v in one dtype, u in float32, w per token in float32
    or r's dtype (RWKV-5's [H, K] in float32)."""
    dt = _act_dtype("wkv6", r, k, v)
    _head_size("wkv6", r, v)
    w_dtype = torch.float32 if w.dim() == 2 else _decay_dtype(w, dt)
    return _c(r, dt), _c(k, dt), _c(v, dt), _c(w, w_dtype), _f32(u)


def _wkv6_forward(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: Tensor, save: bool,
                  chunk: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RWKV-5/6 forward (w [H, K] for RWKV-5, read in place) -> y, final state, snapshots,
    chunk transitions (the last two empty unless ``save``)."""
    y, sT, snap, trans = load().wkv6_forward(*_v6_inputs(r, k, v, w, u), _f32(state), save, chunk)
    return y, sT, snap, trans


def _wkv6_backward(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, snap: Tensor, trans: Tensor,
                   gy: Tensor, gS: Tensor, chunk: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> gr, gk, gv (the activations' dtype), gw (the kernels' w dtype), gu, g_state (float32)."""
    rr, kk, vv, ww, uu = _v6_inputs(r, k, v, w, u)
    gr, gk, gv, gw, gu, gs0 = load().wkv6_backward(rr, kk, vv, ww, uu, snap, trans, _c(gy, rr.dtype),
                                                   _f32(gS), chunk)
    if w.dim() == 2:  # RWKV-5: one decay for every token
        gw = _sum_to(gw, (0, 1))
    return gr, gk, gv, gw, _sum_to(gu, (0, 1)), gs0


def _bi_wkv6_forward(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: Tensor, save: bool,
                     chunk: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Bidirectional v6: the left-to-right scan with the bonus, plus the right-to-left scan
    without it (the token counted once), the kernels reading the sequence in place in both
    directions, in one call of the extension. The halves' y (and gr, gk, gv) are summed in
    float32 and rounded once to bfloat16 / float16, as in a float32 accumulation. The two scans
    run at once in the forward, one after the other in the backward (``halves_concurrent``).
    -> y, final states [B, 2, H, K, V], snapshots and transitions of each direction."""
    rr, kk, vv, ww, uu = _v6_inputs(r, k, v, w, u)
    return tuple(load().bi_wkv6_forward(rr, kk, vv, ww, uu, _f32(state), save, chunk,
                                        halves_concurrent(False, rr.device)))


def _bi_wkv6_backward(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, snap_f: Tensor, trans_f: Tensor,
                      snap_b: Tensor, trans_b: Tensor, gy: Tensor, gS: Tensor,
                      chunk: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> gr, gk, gv (the activations' dtype, rounded once), gw (the kernels' w dtype, rounded
    once), gu, g_state (float32)."""
    rr, kk, vv, ww, uu = _v6_inputs(r, k, v, w, u)
    gr, gk, gv, gw, gu, gs = load().bi_wkv6_backward(rr, kk, vv, ww, uu, snap_f, trans_f, snap_b, trans_b,
                                                     _c(gy, rr.dtype), _f32(gS), chunk,
                                                     halves_concurrent(True, rr.device))
    return gr, gk, gv, gw, _sum_to(gu, (0, 1)), gs


def _wkv7_inputs(r, k, v, w, a, b):
    """What the wkv7 kernels take: r, k, v, a, b in one dtype, w in float32 or that dtype."""
    dt = _act_dtype("wkv7", r, k, v, a, b)
    _head_size("wkv7", r, v)
    return _c(r, dt), _c(k, dt), _c(v, dt), _c(w, _decay_dtype(w, dt)), _c(a, dt), _c(b, dt)


def _wkv7_forward(r: Tensor, k: Tensor, v: Tensor, w: Tensor, a: Tensor, b: Tensor, state: Tensor, save: bool,
                  chunk: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """RWKV-7 forward -> y, final state, snapshots, sa, chunk transitions (the last three
    empty unless ``save``)."""
    y, sT, snap, sa, trans = load().wkv7_forward(*_wkv7_inputs(r, k, v, w, a, b), _f32(state), save, chunk)
    return y, sT, snap, sa, trans


def _wkv7_backward(r: Tensor, k: Tensor, v: Tensor, w: Tensor, a: Tensor, b: Tensor, snap: Tensor, sa: Tensor,
                   trans: Tensor, gy: Tensor, gS: Tensor,
                   chunk: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> gr, gk, gv, gw (the kernels' w dtype), ga, gb, g_state (float32)."""
    rr, kk, vv, ww, aa, bb = _wkv7_inputs(r, k, v, w, a, b)
    gr, gk, gv, gw, ga, gb, gs0 = load().wkv7_backward(rr, kk, vv, ww, aa, bb, snap, sa, trans,
                                                       _c(gy, rr.dtype), _f32(gS), chunk)
    return gr, gk, gv, gw, ga, gb, gs0


def _point_inputs(k, v, w):
    """What the point_wkv kernels take: k, v in one dtype, w in float32 or that dtype."""
    dt = _act_dtype("point_wkv", k, v)
    _head_size("point_wkv", k, v)
    return _c(k, dt), _c(v, dt), _c(w, _decay_dtype(w, dt))


def _point_forward(k: Tensor, v: Tensor, w: Tensor, state: Tensor, save: bool) -> tuple[Tensor, Tensor, Tensor]:
    """PointRWKV's two scans -> A [2, B, T, H, K] (float32), final states [B, 2, H, K, K],
    snapshots (empty unless ``save``)."""
    A, sT, snap = load().point_forward(*_point_inputs(k, v, w), _f32(state), save)
    return A, sT, snap


def _point_backward(k: Tensor, v: Tensor, w: Tensor, snap: Tensor, gA: Tensor,
                    gS: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> gk, gv (the activations' dtype), gw (the kernels' w dtype), each the two directions'
    float32 sum rounded once, and g_state (float32). gA, gS empty: zero."""
    gk, gv, gw, gs0 = load().point_backward(*_point_inputs(k, v, w), snap, _f32(gA), _f32(gS))
    return gk, gv, gw, gs0


# Fakes: the shapes and dtypes the host code (wkv_host.cpp) allocates.

def _f32_empty(like, *shape):
    return like.new_empty(shape, dtype=torch.float32)


def _v4_forward_fake(k, v, w, u, state, chunk, bidirectional):
    B, T, C = k.shape
    _, NC = _chunks(chunk, T, 1)
    return (k.new_empty(k.shape), _f32_empty(k, *state.shape),
            _f32_empty(k, B, NC, 2 if bidirectional else 1, 3, C))


def _v4_backward_fake(k, v, w, u, enter, sT, gy, gS, chunk, bidirectional):
    return tuple(_f32_empty(k, *x.shape) for x in (k, v, w, u, sT))


def _saved_fake(r, save, chunk):
    """Snapshots and chunk transitions of a matrix-state forward (as wkv_host.cpp allocates)."""
    B, T, H, n = r.shape
    _, NCL = _chunks(chunk, T, SNAP)
    snap = _f32_empty(r, B, H, -(-T // SNAP), n, n) if save else _f32_empty(r, 0)
    trans = _f32_empty(r, B if save and NCL > 1 else 0, H, NCL, n, n)
    return snap, trans


def _wkv6_forward_fake(r, k, v, w, u, state, save, chunk):
    B, _, H, n = r.shape
    return (r.new_empty(v.shape), _f32_empty(r, B, H, n, n), *_saved_fake(r, save, chunk))


def _wkv6_backward_fake(r, k, v, w, u, snap, trans, gy, gS, chunk, halves=1):
    B, _, H, n = r.shape
    gw_dtype = torch.float32 if w.dim() == 2 else _decay_dtype(w, r.dtype)
    gs0 = _f32_empty(r, B, H, n, n) if halves == 1 else _f32_empty(r, B, halves, H, n, n)
    return (r.new_empty(r.shape), r.new_empty(r.shape), r.new_empty(v.shape),
            w.new_empty(w.shape, dtype=gw_dtype), _f32_empty(r, *u.shape), gs0)


def _bi_wkv6_forward_fake(r, k, v, w, u, state, save, chunk):
    B, _, H, n = r.shape
    saved = _saved_fake(r, save, chunk)
    return (r.new_empty(v.shape), _f32_empty(r, B, 2, H, n, n), *saved, *(x.new_empty(x.shape) for x in saved))


def _bi_wkv6_backward_fake(r, k, v, w, u, snap_f, trans_f, snap_b, trans_b, gy, gS, chunk):
    return _wkv6_backward_fake(r, k, v, w, u, snap_f, trans_f, gy, gS, chunk, halves=2)


def _wkv7_forward_fake(r, k, v, w, a, b, state, save, chunk):
    B, T, H, n = r.shape
    snap, trans = _saved_fake(r, save, chunk)
    sa = _f32_empty(r, B, T, H, n) if save else _f32_empty(r, 0)
    return r.new_empty(v.shape), _f32_empty(r, B, H, n, n), snap, sa, trans


def _wkv7_backward_fake(r, k, v, w, a, b, snap, sa, trans, gy, gS, chunk):
    B, _, H, n = r.shape
    return (r.new_empty(r.shape), r.new_empty(r.shape), r.new_empty(v.shape),
            w.new_empty(w.shape, dtype=_decay_dtype(w, r.dtype)), r.new_empty(r.shape), r.new_empty(r.shape),
            _f32_empty(r, B, H, n, n))


def _point_forward_fake(k, v, w, state, save):
    B, T, H, n = k.shape
    snap = _f32_empty(k, 2, B, H, -(-T // SNAP), n, n) if save else _f32_empty(k, 0)
    return _f32_empty(k, 2, B, T, H, n), _f32_empty(k, B, 2, H, n, n), snap


def _point_backward_fake(k, v, w, snap, gA, gS):
    B, _, H, n = k.shape
    return (k.new_empty(k.shape), k.new_empty(v.shape), w.new_empty(w.shape, dtype=_decay_dtype(w, k.dtype)),
            _f32_empty(k, B, 2, H, n, n))


def _fps(points: Tensor, n: int) -> Tensor:
    return load().farthest_point_sample(points.contiguous(), n)


def _fps_fake(points, n):
    return points.new_empty(points.shape[0], n, dtype=torch.long)


def _register(fn, fake):
    return _custom_ops.register("cuda", fn, fake)


_v4_forward_op = _register(_v4_forward, _v4_forward_fake)
_v4_backward_op = _register(_v4_backward, _v4_backward_fake)
_wkv6_forward_op = _register(_wkv6_forward, _wkv6_forward_fake)
_wkv6_backward_op = _register(_wkv6_backward, _wkv6_backward_fake)
_bi_wkv6_forward_op = _register(_bi_wkv6_forward, _bi_wkv6_forward_fake)
_bi_wkv6_backward_op = _register(_bi_wkv6_backward, _bi_wkv6_backward_fake)
_wkv7_forward_op = _register(_wkv7_forward, _wkv7_forward_fake)
_wkv7_backward_op = _register(_wkv7_backward, _wkv7_backward_fake)
_point_forward_op = _register(_point_forward, _point_forward_fake)
_point_backward_op = _register(_point_backward, _point_backward_fake)
_fps_op = _register(_fps, _fps_fake)
_traced = _custom_ops.traced


def _zeros_if_none(g, shape, like, dtype=None):
    """An output's gradient, zeros if the output did not reach the loss."""
    return like.new_zeros(shape, dtype=dtype) if g is None else g


def _cast(grads, dtypes):
    """The kernels' gradients in their inputs' dtypes (no call where they already are: a
    no-op ``.to`` still costs microseconds, on every backward)."""
    return tuple(g if g.dtype == d else g.to(d) for g, d in zip(grads, dtypes))


# The Functions cast their inputs to what the kernels take once, and keep the cast tensors for
# the backward (the implementations' own casts are then no-ops).

class _PerChannel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, k, v, w, u, state, chunk, bidirectional):
        dtypes = [x.dtype for x in (k, v, w, u, state)]
        k, v, w, u = _v4_inputs("bi_wkv4" if bidirectional else "wkv4", k, v, w, u)
        state = _f32(state)
        y, sT, enter = _traced(_v4_forward_op, _v4_forward)(k, v, w, u, state, chunk, bidirectional)
        ctx.save_for_backward(k, v, w, u, enter, sT)
        ctx.args = (chunk, bidirectional, dtypes)
        return y, sT

    @staticmethod
    def backward(ctx, gy, gsT):
        k, v, w, u, enter, sT = ctx.saved_tensors
        chunk, bidirectional, dtypes = ctx.args
        gy, gsT = _zeros_if_none(gy, k.shape, k), _zeros_if_none(gsT, sT.shape, sT)
        grads = _traced(_v4_backward_op, _v4_backward)(k, v, w, u, enter, sT, gy, gsT, chunk, bidirectional)
        return (*_cast(grads, dtypes), None, None)


class _Matrix(torch.autograd.Function):
    """wkv5 / wkv6, bi_wkv6 and wkv7 (``kind``): the forward operator returns what the backward
    operator reads after y and the final state."""

    @staticmethod
    def forward(ctx, kind, chunk, *xs):
        dtypes = [x.dtype for x in xs]
        xs = _MATRIX_OPS[kind][2](*xs)
        y, sT, *saved = _traced(*_MATRIX_OPS[kind][0])(*xs, True, chunk)
        ctx.save_for_backward(*xs[:-1], *saved)  # the inputs but the state, the forward's records
        ctx.args = (kind, chunk, dtypes)
        ctx.set_materialize_grads(False)  # an output off the loss: None, not a tensor of zeros
        return y, sT

    @staticmethod
    def backward(ctx, gy, gsT):
        kind, chunk, dtypes = ctx.args
        xs = ctx.saved_tensors
        gy = _zeros_if_none(gy, xs[2].shape, xs[2])  # v's shape
        if gsT is None:  # the final state did not reach the loss: the kernels start from zero
            gsT = xs[0].new_empty(0, dtype=torch.float32)
        grads = _cast(_traced(*_MATRIX_OPS[kind][1])(*xs, gy, gsT, chunk), dtypes)
        if not ctx.needs_input_grad[-1]:  # e.g. no initial state (an empty tensor)
            grads = (*grads[:-1], None)
        return (None, None, *grads)


class _Point(torch.autograd.Function):
    """PointRWKV's two scans (point_scan): A and the final states from k, v, w and the initial
    states (empty: zero); gradients to all four."""

    @staticmethod
    def forward(ctx, k, v, w, state):
        dtypes = [x.dtype for x in (k, v, w, state)]
        k, v, w = _point_inputs(k, v, w)
        A, sT, snap = _traced(_point_forward_op, _point_forward)(k, v, w, _f32(state), True)
        ctx.save_for_backward(k, v, w, snap)
        ctx.dtypes = dtypes
        ctx.set_materialize_grads(False)  # an output off the loss: None, not a tensor of zeros
        return A, sT

    @staticmethod
    def backward(ctx, gA, gS):
        k, v, w, snap = ctx.saved_tensors
        none = k.new_empty(0, dtype=torch.float32)  # the kernels read an empty gradient as zero
        grads = _traced(_point_backward_op, _point_backward)(
            k, v, w, snap, none if gA is None else gA, none if gS is None else gS)
        grads = _cast(grads, ctx.dtypes)
        if not ctx.needs_input_grad[3]:  # e.g. no initial state (an empty tensor)
            grads = (*grads[:3], None)
        return grads


def _v6_all_inputs(r, k, v, w, u, state):
    return (*_v6_inputs(r, k, v, w, u), _f32(state))


def _wkv7_all_inputs(r, k, v, w, a, b, state):
    return (*_wkv7_inputs(r, k, v, w, a, b), _f32(state))


# kind -> ((forward operator, implementation), (backward operator, implementation), input casts)
_MATRIX_OPS = {
    "wkv6": ((_wkv6_forward_op, _wkv6_forward), (_wkv6_backward_op, _wkv6_backward), _v6_all_inputs),
    "bi_wkv6": ((_bi_wkv6_forward_op, _bi_wkv6_forward), (_bi_wkv6_backward_op, _bi_wkv6_backward),
                _v6_all_inputs),
    "wkv7": ((_wkv7_forward_op, _wkv7_forward), (_wkv7_backward_op, _wkv7_backward), _wkv7_all_inputs),
}


def _needs_grad(xs):
    return torch.is_grad_enabled() and any(x.requires_grad for x in xs)


# ---------------------------------------------------------------------------- backend API

def _per_channel(bidirectional, k, v, w, u, state):
    B, T, C = k.shape
    chunk = v4_chunk_length(B, C, T, k.device)
    if _needs_grad((k, v, w, u, state)):
        return _PerChannel.apply(k, v, w, u, state, chunk, bidirectional)
    return _traced(_v4_forward_op, _v4_forward)(k, v, w, u, state, chunk, bidirectional)[:2]


def wkv4(k, v, w, u, state):
    """RWKV-4: k, v [B, T, C]; w, u [C]; state [B, 3, C] -> (y [B, T, C], final state)."""
    return _per_channel(False, k, v, w, u, state)


def bi_wkv4(k, v, w, u, state):
    """Bidirectional v4: k, v [B, T, C]; w, u [C]; state [B, 2, 3, C] -> (y, final state)."""
    return _per_channel(True, k, v, w, u, state)


def _matrix(kind, *xs):
    if xs[-1] is None:  # no initial state: an empty one, which the extension reads as zero
        xs = (*xs[:-1], xs[0].new_empty(0, dtype=torch.float32))
    B, T, H, _ = xs[0].shape
    w = xs[3]  # wkv6 and wkv7 alike: (r, k, v, w, ...); RWKV-5's [H, K] decay runs in float32
    narrow = xs[0].element_size() == 2 and w.dim() == 4 and _decay_dtype(w, xs[0].dtype).itemsize == 2
    chunk = chunk_length(B, H, T, xs[0].device, narrow)
    if _needs_grad(xs):
        return _Matrix.apply(kind, chunk, *xs)
    return _traced(*_MATRIX_OPS[kind][0])(*xs, False, chunk)[:2]


def wkv6(r, k, v, w, u, state):
    """RWKV-6: r, k, w [B, T, H, K]; v [B, T, H, V]; u [H, K]; state [B, H, K, V] or None
    (zero)."""
    return _matrix("wkv6", r, k, v, w, u, state)


def wkv5(r, k, v, w, u, state):
    """RWKV-5.2: :func:`wkv6` with w [H, K], one decay for every token, which the kernels read in
    place: no [B, T, H, K] float32 copy in the forward, nor kept for the backward."""
    return _matrix("wkv6", r, k, v, w, u, state)


def bi_wkv6(r, k, v, w, u, state):
    """Bidirectional v6: shapes as :func:`wkv6`, state [B, 2, H, K, V] (left-to-right,
    right-to-left) or None -> (y, final state [B, 2, H, K, V]); rounded once (see
    _bi_wkv6_forward)."""
    return _matrix("bi_wkv6", r, k, v, w, u, state)


def wkv7(r, k, v, w, a, b, state):
    """RWKV-7: r, k, w, a, b [B, T, H, K]; v [B, T, H, V]; state [B, H, K, V] or None (zero)."""
    return _matrix("wkv7", r, k, v, w, a, b, state)


def point_scan(k, v, w, state=None):
    """PointRWKV's two WKV scans (``rwkv_hf.ops.point_wkv`` without r, u and the sum), per
    (batch, head), K = V: ``A_t = S_{t-1} k_t`` (the state before the token, contracted with k
    over its value index), ``S_t = diag(e^{w_t}) S_{t-1} + k_t v_t^T``, left to right from
    ``state[:, 0]`` and right to left from ``state[:, 1]``.

    k, v [B, T, H, K] (float32, bfloat16 or float16, one dtype); w [B, T, H, K] log-decay (<= 0)
    in float32 or k's dtype (read as it is; its gradient comes back in its dtype); state
    [B, 2, H, K, K] float32, or None (zero). -> (A [2, B, T, H, K] float32, A[0] left to right,
    A[1] right to left; final states [B, 2, H, K, K] float32: [:, 0] after the last token,
    [:, 1] after the first). Differentiable in k, v, w and state; the directions' gradients
    of k, v, w are summed in float32 and rounded once to each input's dtype."""
    if state is None:  # no initial state: an empty one, which the extension reads as zero
        state = k.new_empty(0, dtype=torch.float32)
    if _needs_grad((k, v, w, state)):
        return _Point.apply(k, v, w, state)
    return _traced(_point_forward_op, _point_forward)(k, v, w, state, False)[:2]


def farthest_point_sample(points, n):
    """PointRWKV's farthest point sampling (see ``rwkv_hf.ops.farthest_point_sample``): points
    [B, N, 3] float32 or float64 (finite; not checked here: that would wait for the GPU),
    1 <= n <= N -> indices [B, n] (int64), one block per cloud for all n - 1 steps."""
    return _traced(_fps_op, _fps)(points, n)
