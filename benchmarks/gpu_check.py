"""One-shot GPU check of rwkv_hf's CUDA extension: build, correctness against float64, timing.

    PYTHONPATH=src python benchmarks/gpu_check.py          # under 5 minutes on one H100/H200

Needs only torch (and optionally flash-linear-attention for the side-by-side timings); no
``pip install``. A GPU machine without fla gets it as wheels unpacked into the git-ignored
``.gpu_peers/`` folder here (``PEERS_HELP`` below), carried along with the working tree. Steps:

1. build/load the extension for the visible GPU (JIT, cached), timed;
2. correctness of every op (wkv4, bi_wkv4, wkv5 (wkv6 with one decay for all tokens), wkv6,
   bidirectional v6 composed as the dispatcher does, wkv7; PointRWKV's point_wkv, its two scans
   in the extension and the rest composed as the dispatcher does) in float32 and bfloat16, T in
   {1, 17, 130 (other head sizes / odd C), 4096, 65536} (point_wkv: up to 4096): outputs, final
   state and the gradient of
   every input (initial state included, from both outputs) against float64 (the ``torch``
   backend for long sequences when it exists, else the ``reference`` token loop);
   max|a-b|/max|b| <= 1e-5 (float32) or 1e-2 (bfloat16); outputs are poisoned with NaN first;
3. timings with CUDA events (bfloat16, N = 64; bi-WKV v4 also float32), forward and
   forward+backward, next to flash-linear-attention's chunk_rwkv7 / fused_recurrent_rwkv7 /
   chunk_rwkv6 when importable; the causal ops from an initial state (fla's too) and with its
   gradient, the bidirectional ops from none (as Vision-RWKV and the official kernels run);
   point_wkv (bfloat16 and float32, as PointRWKV runs it: from no state) next to the torch
   backend's chunked form, with the ratio;
4. bfloat16 accuracy of the extension and of fla's kernels against float64 on the same inputs
   (wkv7, wkv6; max-relative and RMS-relative error of y and every gradient);
5. models (needs the package's dependencies, transformers and safetensors): every family in the
   repository on the GPU, through the extension against the torch backend on the same GPU
   (``RWKV_HF_WKV_BACKEND=torch``): the shipped tiny RWKV-7, Vision-RWKV v4/v6, Restore-RWKV
   and PointRWKV part segmentation models (real weights), random RWKV-4/5/6 language models,
   RWKV-CLIP and PointRWKV (and the same PointRWKV model on the CPU); logits, every parameter's
   gradient, greedy generation, held-out digit accuracy, PSNR, rankings, part mIoU; and the first model's training step compiled
   through the extension's operators (torch.compile, fullgraph, aot_eager) against eager mode;
6. PointRWKV's farthest point sampling (``fps``): the kernel against the torch form's loop on
   the same device (the same indices, bit for bit: random float32 / float64 clouds, a grid of
   ties, clouds whose pick depends on the distance's roundings) and both timed;
7. CUDA graphs (what ``torch.compile(mode="reduce-overhead")`` and serving stacks capture): each
   op's forward captured with ``torch.cuda.graph`` and its forward+backward with
   ``torch.cuda.make_graphed_callables`` (a decoding step, the chunk-parallel forms, bi_wkv6's
   second stream), replayed on new inputs against eager mode, and both timed.

Each group of cases runs in its own subprocess with a time limit (a kernel fault or a hang
costs that group only); the sections end by ~295 s ($GPU_CHECK_BUDGET_S, default 290, + 5),
then the summary prints (a watchdog ends the script at the budget + 30 s). Within that, on a fresh machine, fla's rows get little: its Triton kernels
compile and autotune on first use (minutes); ``GPU_CHECK_BUDGET_S=540`` runs everything of
the extension's and some of fla's. Results: a table on stdout and JSON in $OUT/gpu_check.json
(or ./gpu_check.json). ``--compare`` earlier JSON files (``benchmarks/gpu/*.json``, same card
kind) prints the default forms' times and kernel times now against then; ``--report FILE``
prints the tables of a saved JSON (a run stopped before its summary, or an old one).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import types

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SRC = os.path.join(REPO, "src")
TOTAL_BUDGET_S = float(os.environ.get("GPU_CHECK_BUDGET_S", "290"))
TOL = {"float32": 1e-5, "bfloat16": 1e-2}
# GPU_CHECK_SELFTEST=1: exercise this script's harness on the CPU, with the reference backend
# standing in for the extension (no GPU, no timings); for developing the script only.
# GPU_CHECK_SELFTEST=emulated: the extension's own kernels instead, built for the CPU under the
# CUDA emulation of tests/cuda_emulation.py, with the chunk choice of a 132-SM GPU.
SELFTEST = os.environ.get("GPU_CHECK_SELFTEST", "")
DEVICE = "cpu" if SELFTEST else "cuda"

# (section, share of the time left after the build): each runs in its own process. The shares
# follow the 2026-11-28 H200 run (GPU_CHECK_BUDGET_S=540; build and start-up ~70 s): each
# correctness section took ~20 s, bench_lm ~80 s (its core rows about half), bench_bi ~34 s,
# models ~29 s; a section's unused time goes to the ones after it. fla's Triton kernels compile
# and autotune on the first call of each shape (one row took most of 156 s there): the accuracy
# section (the extension's errors first) and fla's timings come last and get what is left.
# correct_point and bench_point (PointRWKV's point_wkv, added 2026-11-28 evening, not yet run on
# a GPU) take a small share each: its cases are few and short; so does fps (PointRWKV's sampling
# kernel, added 2026-11-28 late).
SECTIONS = [("correct_v7", 0.14), ("correct_v6", 0.14), ("correct_v4", 0.12), ("correct_point", 0.04),
            ("fps", 0.03), ("bench_lm", 0.18), ("bench_bi", 0.14), ("bench_point", 0.04), ("models", 0.10),
            ("graphs", 0.04), ("accuracy", 0.07), ("bench_fla", 0.07)]
# flash-linear-attention is not on every GPU image: wheels unpacked into this (git-ignored)
# folder travel with the working tree and are importable when no installed fla is (see
# PEERS_HELP).
PEERS_DIR = os.path.join(REPO, ".gpu_peers")
PEERS_HELP = ("pip download --no-deps flash-linear-attention==0.6.0 fla-core==0.6.0 einops -d /tmp/w && "
              "for f in /tmp/w/*.whl; do python -m zipfile -e $f .gpu_peers; done")
# fla's kernels choose their launch configs by compiling and timing every candidate on the
# first call of each shape (minutes per shape on a fresh machine), and have Triton keep the
# choices on disk (fla's FLA_CACHE_RESULTS, on by default) in its cache directory. That
# directory is put in the carried folder, and the choices (*.autotune.json) are handed back
# under $OUT/triton_autotune: copied into .gpu_peers/triton_cache, they let a later run on the
# same software compile only the chosen config of each kernel.
TRITON_CACHE = os.path.join(PEERS_DIR, "triton_cache")
if os.path.isdir(PEERS_DIR) and PEERS_DIR not in sys.path:
    sys.path.append(PEERS_DIR)
MODEL_TOL = {"logits": 1e-4, "grads": 1e-3}  # float32 models: cuda backend against torch backend


# ---------------------------------------------------------------------------- imports

def import_package():
    """(reference module, make_inputs, cuda_backend module, torch backend namespace or None).

    Imports through ``rwkv_hf.ops`` when the package imports; otherwise (a dependency of the
    package missing on this machine) loads the modules of rwkv_hf/ops directly.
    """
    import torch  # noqa: F401  (fail early and clearly if torch is missing)

    if SRC not in sys.path:
        sys.path.insert(0, SRC)
    try:
        import rwkv_hf.ops  # noqa: F401
    except Exception as e:  # build bare packages so that submodules import without __init__
        for name in [m for m in sys.modules if m == "rwkv_hf" or m.startswith("rwkv_hf.")]:
            del sys.modules[name]
        pkg = types.ModuleType("rwkv_hf")
        pkg.__path__ = [os.path.join(SRC, "rwkv_hf")]
        sub = types.ModuleType("rwkv_hf.ops")
        sub.__path__ = [os.path.join(SRC, "rwkv_hf", "ops")]
        sys.modules["rwkv_hf"], sys.modules["rwkv_hf.ops"] = pkg, sub
        pkg.ops = sub
        print(f"[gpu_check] note: 'import rwkv_hf.ops' failed ({type(e).__name__}: {e}); "
              "loading its modules directly", flush=True)
    import importlib

    reference = importlib.import_module("rwkv_hf.ops.reference")
    make_inputs = importlib.import_module("rwkv_hf.ops.random_inputs").make_inputs
    cuda_backend = importlib.import_module("rwkv_hf.ops.cuda_backend")
    if SELFTEST == "emulated":
        sys.path.insert(0, os.path.join(REPO, "tests"))
        emulated = importlib.import_module("cuda_emulation").build()
        cuda_backend._ext = emulated
        cuda_backend._act_dtype = lambda op, *xs: xs[0].dtype
        cuda_backend._sm_count = lambda device: 132
        auto = cuda_backend.chunk_length
        cuda_backend.chunk_length = lambda B, H, T, device, narrow=False: auto(B, H, T, "cuda", narrow)
        auto4 = cuda_backend.v4_chunk_length
        cuda_backend.v4_chunk_length = lambda B, C, T, device: auto4(B, C, T, "cuda")
        # The models section asks for backend "cuda": let it reach the emulated kernels.
        cuda_backend.available = lambda: (True, "ok (emulated)")
        needs = cuda_backend.unsupported_reason
        cuda_backend.unsupported_reason = lambda op, **t: (
            lambda why: None if why == "the CUDA backend needs CUDA tensors" else why)(needs(op, **t))
    elif SELFTEST:
        def as_backend(fn):
            # As a backend is called: activations in any dtype, the state in float32; the loop
            # computes in float32 and y comes back in the activations' dtype.
            def call(*xs):
                y, s = fn(*(x if x is None else x.float() for x in xs))
                return y.to(xs[0].dtype), s
            return call

        cuda_backend = types.SimpleNamespace(
            **{op: as_backend(getattr(reference, op))
               for op in ("wkv4", "bi_wkv4", "wkv6", "wkv7", "point_wkv")},
            load=lambda verbose=False: types.SimpleNamespace(__file__="(selftest)"),
            find_cuda_home=cuda_backend.find_cuda_home)
    torch_ns = None
    try:
        t4 = importlib.import_module("rwkv_hf.ops.torch_wkv4")
        t6 = importlib.import_module("rwkv_hf.ops.torch_wkv6")
        t7 = importlib.import_module("rwkv_hf.ops.torch_wkv7")
        tp = importlib.import_module("rwkv_hf.ops.torch_point")
        ops = importlib.import_module("rwkv_hf.ops")
        torch_ns = types.SimpleNamespace(wkv4=t4.wkv4, bi_wkv4=t4.bi_wkv4, wkv6=t6.wkv6, wkv7=t7.wkv7,
                                         point_wkv=ops._point_from_scans(tp.point_scan))
    except Exception as e:
        print(f"[gpu_check] note: the torch backend is not importable ({type(e).__name__}: {e}); "
              "long sequences are checked only where the reference loop is affordable", flush=True)
    return reference, make_inputs, cuda_backend, torch_ns


# ---------------------------------------------------------------------------- op plumbing

def point_via_scans(cb):
    """point_wkv on the extension, whose kernels run its two scans (``point_scan``), composed
    by the dispatcher's own code (y = r (A_fwd + A_bwd + u k sum(v)) in float32, which the caller
    rounds once to the activations' dtype)."""
    from rwkv_hf import ops

    return ops._point_from_scans(cb.point_scan)


def run_op(be, op, x):
    """(y, final_state) of ``op`` on backend namespace ``be`` (wkv4, bi_wkv4, wkv6, wkv7,
    point_wkv or the extension's point_scan), composed for wkv5, bi_wkv6 and the extension's
    point_wkv exactly as the dispatcher composes them."""
    import torch

    if op == "point_wkv":
        r, k, v, w, u, s = (x[n] for n in ("r", "k", "v", "w", "u", "state"))
        if hasattr(be, "point_scan"):  # the extension: the scans in its kernels, the rest in torch
            y, final = point_via_scans(be)(r, k, v, w, u, s)
            return y.to(r.dtype), final
        if s is None:  # the torch and reference loops take a state: zero, as the dispatcher passes
            B, _, H, K = k.shape
            s = torch.zeros(B, 2, H, K, K, device=k.device, dtype=k.dtype)
        return be.point_wkv(r, k, v, w, u, s)

    if op == "wkv4":
        return be.wkv4(x["k"], x["v"], x["w"], x["u"], x["state"])
    if op == "bi_wkv4":
        return be.bi_wkv4(x["k"], x["v"], x["w"], x["u"], x["state"])
    if op == "wkv5":
        if hasattr(be, "wkv5"):  # the extension reads the decay [H, K] in place
            return be.wkv5(x["r"], x["k"], x["v"], x["w"], x["u"], x["state"])
        B, T, H, K = x["r"].shape
        return be.wkv6(x["r"], x["k"], x["v"], x["w"].expand(B, T, H, K), x["u"], x["state"])
    if op == "wkv6":
        return be.wkv6(x["r"], x["k"], x["v"], x["w"], x["u"], x["state"])
    if op == "bi_wkv6":
        r, k, v, w, u, s = (x[n] for n in ("r", "k", "v", "w", "u", "state"))
        if hasattr(be, "bi_wkv6"):  # the extension: both directions in place, one rounding
            return be.bi_wkv6(r, k, v, w, u, s)
        y_f, s_f = be.wkv6(r, k, v, w, u, s[:, 0])
        y_b, s_b = be.wkv6(r.flip(1), k.flip(1), v.flip(1), w.flip(1), torch.zeros_like(u), s[:, 1])
        return y_f + y_b.flip(1), torch.stack([s_f, s_b], 1)
    if op == "wkv7":
        return be.wkv7(x["r"], x["k"], x["v"], x["w"], x["a"], x["b"], x["state"])
    raise ValueError(op)


def empty_v4_state(like):
    """The per-channel state rwkv_hf.ops passes for no initial state: an empty accumulator
    (logscale rwkv_hf.ops.V4_EMPTY_LOGSCALE, written out: this script also runs where the
    package's dependencies are missing and rwkv_hf.ops does not import)."""
    s = like.new_zeros(like.shape)
    s.select(-2, 2).fill_(-1e38)
    return s


def with_chunk(chunk, fn):
    """fn() with $RWKV_HF_CUDA_CHUNK set to ``chunk`` (None: the extension's own choice)."""
    env = "RWKV_HF_CUDA_CHUNK"
    old = os.environ.get(env)
    if chunk is None:
        os.environ.pop(env, None)
    else:
        os.environ[env] = str(chunk)
    try:
        return fn()
    finally:
        if old is None:
            os.environ.pop(env, None)
        else:
            os.environ[env] = old


def with_halves(cb, concurrent, fn):
    """fn() with bi_wkv6's two scans forced at once (True) or one after the other (False), in
    the forward and the backward."""
    real = cb.halves_concurrent
    cb.halves_concurrent = lambda *args: concurrent
    try:
        return fn()
    finally:
        cb.halves_concurrent = real


def chunk_forms(cb, op, B, T, H, N):
    """The forms of the kernels to run: [(label, chunk)]; one pass over T ("seq", chunk 0) and,
    where the extension would split this shape into chunks over time, its choice."""
    per_channel = op in ("wkv4", "bi_wkv4")
    rule = getattr(cb, "v4_chunk_length" if per_channel else "chunk_length", None)
    if rule is None or op == "point_wkv":  # point_wkv: one pass over T (its only form)
        return [("", None)]
    auto = with_chunk(None, lambda: rule(B, H * N if per_channel else H, T, DEVICE))
    forms = [("seq", 0)]
    if auto:
        forms.append((f"chunk {auto}", auto))
    return forms


def rel(a, b):
    a, b = a.double(), b.double()
    if not bool(torch_isfinite_all(a)):
        return float("nan")
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def torch_isfinite_all(t):
    import torch

    return torch.isfinite(t).all()


def canon(state, like):
    """Per-channel states (num, den, logscale): what they represent, on the reference's scale."""
    import torch

    ls, ref_ls = state.select(-2, 2), like.select(-2, 2)
    scale = torch.exp(ls.double() - ref_ls.double())
    return torch.stack([state.select(-2, 0).double() * scale, state.select(-2, 1).double() * scale], -2)


_POISON = []


def poison(nbytes_list):
    """Leave NaN-filled blocks of these sizes in torch's allocator cache, so that the next
    allocations (the kernels' outputs and scratch) start as NaN, not as stale results."""
    import torch

    if SELFTEST:
        return
    torch.cuda.synchronize()
    del _POISON[:]
    torch.cuda.empty_cache()
    blocks = [torch.full((max(1, n // 4),), float("nan"), device=DEVICE) for n in nbytes_list]
    torch.cuda.synchronize()
    del blocks


# ---------------------------------------------------------------------------- correctness

def correctness_cases(section):
    """(op, B, T, H, N, oracle-kind) per section; N is also C/H for per-channel ops."""
    ops = {"correct_v7": ["wkv7"], "correct_v6": ["wkv6", "wkv5", "bi_wkv6"],
           "correct_v4": ["wkv4", "bi_wkv4"], "correct_point": ["point_wkv"]}[section]
    if ops == ["point_wkv"]:  # PointRWKV's sequences are short: up to 4096 tokens here
        cases = [("point_wkv", 2, 1, 2, 64), ("point_wkv", 2, 17, 2, 64)]
        cases += [("point_wkv", 1, 130, 2, n) for n in (16, 32, 96, 128)]
        cases += [("point_wkv", 2, 2048, 8, 48), ("point_wkv", 1, 4096, 2, 64)]  # 48: as released
        return [c for c in cases if c[2] <= 130] if SELFTEST else cases
    cases = []
    for op in ops:
        per_channel = op in ("wkv4", "bi_wkv4")
        cases += [(op, 2, 1, 2, 64), (op, 2, 17, 2, 64)]
        if per_channel:
            cases += [(op, 2, 130, 1, 50)]  # odd C
        else:
            cases += [(op, 1, 130, 2, n) for n in (16, 32, 128)]
        cases += [(op, 2, 4096, 2, 64)]
    for op in ops:  # the long ones last: they cost the most
        cases += [(op, 1, 65536, 1, 64)]
    if SELFTEST:
        cases = [c for c in cases if c[2] <= 130]
        if SELFTEST == "emulated":  # long enough for the chunk-parallel form
            cases += [(op, 1, 1100, 1, 16) for op in ops]
    return cases


def check_one(ctx, op, B, T, H, N, emit, deadline):
    import torch

    reference, make_inputs, cb, torch_ns = ctx
    if T <= 200:
        oracle, oracle_name = reference, "reference"
    elif torch_ns is not None:
        oracle, oracle_name = torch_ns, "torch"
    elif T <= 4096:
        oracle, oracle_name = reference, "reference"
    else:
        for dt in ("float32", "bfloat16"):
            emit({"kind": "correct", "op": op, "dtype": dt, "B": B, "T": T, "H": H, "N": N,
                  "status": "SKIP", "why": "no torch backend: the float64 token loop is too slow"})
        return
    seed = 1000 + T + 7 * N + B
    # One set of values for both dtypes: bfloat16-representable, so one float64 reference
    # judges the float32 and the bfloat16 run.
    x16 = make_inputs(op, B, T, H, N, dtype=torch.bfloat16, device=DEVICE, state=True, seed=seed)
    names = list(x16)
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    t0 = time.time()
    x64 = {n: t.detach().double().requires_grad_() for n, t in x16.items()}
    y64, s64 = run_op(oracle, op, x64)
    gy = torch.randn(y64.shape, generator=g, device=DEVICE, dtype=torch.float64)
    gy = gy.to(torch.bfloat16).double()  # representable in every dtype tested
    gs = torch.randn(s64.shape, generator=g, device=DEVICE, dtype=torch.float64).float().double()
    if op in ("wkv4", "bi_wkv4"):  # keep the logscale's gradient modest (it scales num and den)
        gs.select(-2, 2).mul_(0.1)
    grads64 = torch.autograd.grad([y64, s64], [x64[n] for n in names], [gy, gs])
    y64, s64 = y64.detach(), s64.detach()
    t_ref = time.time() - t0
    del x64
    for (form, chunk), (dt_name, dt) in [(f, d) for f in chunk_forms(cb, op, B, T, H, N)
                                         for d in (("float32", torch.float32),
                                                   ("bfloat16", torch.bfloat16))]:
        rec = {"kind": "correct", "op": op, "dtype": dt_name, "B": B, "T": T, "H": H, "N": N,
               "oracle": oracle_name, "ref_s": round(t_ref, 3)}
        if form:
            rec["form"] = form
        if time.time() > deadline:
            rec.update(status="SKIP", why="time budget")
            emit(rec)
            continue
        try:
            xc = {n: (t.detach().to(dt) if n != "state" else t.detach().float()).requires_grad_()
                  for n, t in x16.items()}
            nbytes = [t.numel() * 4 for t in xc.values()] * 3 + [y64.numel() * 4] * 4 + \
                     [s64.numel() * 4 * (T // 64 + 2)] * 2
            poison(nbytes)
            t1 = time.time()

            def fwd_bwd():
                y, s = run_op(cb, op, xc)
                return y, s, torch.autograd.grad([y, s], [xc[n] for n in names],
                                                 [gy.to(y.dtype), gs.to(s.dtype)])
            y, s, grads = with_chunk(chunk, fwd_bwd)
            if not SELFTEST:
                torch.cuda.synchronize()
            rec["cuda_s"] = round(time.time() - t1, 3)
            errs = {"y": rel(y, y64)}
            if op in ("wkv4", "bi_wkv4"):
                errs["state"] = rel(canon(s, s64), canon(s64, s64))
            else:
                errs["state"] = rel(s, s64)
            for n, ga, gb in zip(names, grads, grads64):
                errs["d" + n] = rel(ga, gb)
            dtype_ok = y.dtype == dt and s.dtype == torch.float32 and all(
                ga.dtype == xc[n].dtype for n, ga in zip(names, grads))
            tol = TOL[dt_name]
            worst = max(errs, key=lambda k: -1 if errs[k] != errs[k] else errs[k])
            bad = [k for k, e in errs.items() if not (e <= tol)]
            rec.update(errs={k: float(f"{e:.3g}") if e == e else "nan" for k, e in errs.items()},
                       worst=worst, max_err=errs[worst] if errs[worst] == errs[worst] else "nan",
                       tol=tol, status="PASS" if not bad and dtype_ok else "FAIL")
            if bad:
                rec["failed"] = bad
            if not dtype_ok:
                rec["why"] = "wrong output dtype"
        except Exception as e:
            rec.update(status="ERROR", why=f"{type(e).__name__}: {str(e)[:400]}")
            traceback.print_exc()
            emit(rec)
            if "CUDA" in str(e) or "illegal" in str(e):
                raise  # the context may be gone: end this process, the parent goes on
            continue
        emit(rec)


# ---------------------------------------------------------------------------- timing

def cuda_time(fn, budget_s=8.0, min_reps=3, max_reps=20):
    """Median milliseconds of fn() over repetitions, timed with CUDA events after a warm-up."""
    import torch

    fn()
    torch.cuda.synchronize()
    t0 = time.time()
    fn()
    torch.cuda.synchronize()
    one = time.time() - t0
    reps = max(min_reps, min(max_reps, int(budget_s / max(one, 1e-6) / 2)))
    if one * min_reps > budget_s:
        reps = 1
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def bench_cases(section):
    if section in ("bench_lm", "bench_fla"):
        cases = []
        for op in ("wkv7", "wkv6"):
            for B, T, H in ((8, 4096, 32), (1, 16384, 32)):
                cases.append((op, "bfloat16", B, T, H, 64))
        return cases
    if section == "bench_point":  # PointRWKV as released (8 heads of 48), a training batch's shape
        return [("point_wkv", dt, 8, 2048, 8, 48) for dt in ("bfloat16", "float32")]
    cases = []  # float32: the official kernels' dtype (the issue's comparison); bf16 as well
    for B, T, C in ((64, 196, 192), (64, 196, 768), (4, 4096, 768), (1, 16384, 192)):
        for op in ("bi_wkv4", "bi_wkv6"):
            for dt in ("float32", "bfloat16"):
                cases.append((op, dt, B, T, C // 64, 64))
    return cases


# Issue 5's targets (one H200, ms, fwd / fwd+bwd): the LM rows (bf16) must be at least as fast
# as the faster of fla and BlinkDL's kernels, the bidirectional rows (float32) faster than the
# official Vision-RWKV kernels. Keys: (op, B, T, H or C).
TARGETS = {
    ("wkv7", 8, 4096, 32): (2.11, 8.63), ("wkv7", 1, 16384, 32): (1.76, 6.18),
    ("wkv6", 8, 4096, 32): (1.72, 6.44), ("wkv6", 1, 16384, 32): (1.19, 4.27),
    ("bi_wkv4", 64, 196, 192): (0.304, 1.047), ("bi_wkv4", 64, 196, 768): (1.200, 3.782),
    ("bi_wkv4", 4, 4096, 768): (0.754, 4.283), ("bi_wkv4", 1, 16384, 192): (2.720, 15.34),
    ("bi_wkv6", 64, 196, 192): (0.328, 1.721), ("bi_wkv6", 64, 196, 768): (0.504, 2.987),
    ("bi_wkv6", 4, 4096, 768): (7.974, 38.96), ("bi_wkv6", 1, 16384, 192): (27.26, 139.8),
}
TARGET_DTYPE = {"wkv7": "bfloat16", "wkv6": "bfloat16", "bi_wkv4": "float32", "bi_wkv6": "float32"}


def point_ratios(bench):
    """point_wkv's timing rows: the extension's against the torch backend's on each case."""
    rows = {}
    for r in bench:
        if r["op"] == "point_wkv" and r.get("status") == "OK":
            key = (r["dtype"], r["mode"], r.get("B"), r.get("T"), r.get("H"), r.get("N"))
            rows.setdefault(key, {})["torch" if r["impl"] == "torch backend" else "cuda"] = r["ms"]
    return [{"dtype": d, "mode": m, "B": B, "T": T, "H": H, "N": N, "cuda_ms": t["cuda"],
             "torch_ms": t["torch"], "speedup": round(t["torch"] / t["cuda"], 2)}
            for (d, m, B, T, H, N), t in rows.items() if "cuda" in t and "torch" in t]


def target_rows(bench):
    """Per target row: the extension's default form (what a user gets), fwd and fwd+bwd, against
    the target; PASS when both are at most the target's."""
    rows = []
    for (op, B, T, X), (tf, tb) in TARGETS.items():
        got = {}
        for r in bench:
            size = r.get("C", (r.get("H") or 0) * (r.get("N") or 0)) if op.startswith("bi_") else r.get("H")
            if (r["op"], r.get("B"), r.get("T"), size, r["dtype"]) == (op, B, T, X, TARGET_DTYPE[op]) \
                    and r.get("default") and r.get("status") == "OK":
                got[r["mode"]] = r["ms"]
        status = ("PASS" if got.get("fwd", 1e9) <= tf and got.get("fwd+bwd", 1e9) <= tb else "FAIL") \
            if len(got) == 2 else "MISSING"
        rows.append({"op": op, "B": B, "T": T, "H_or_C": X, "dtype": TARGET_DTYPE[op],
                     "fwd": got.get("fwd"), "fwd+bwd": got.get("fwd+bwd"), "target": (tf, tb),
                     "status": status})
    return rows


def _bench_key(r):
    return (r["op"], r["dtype"], r["mode"], r.get("B"), r.get("T"), r.get("H"), r.get("C"))


def _kernel_key(name):
    """A kernel's name without its type arguments (the dtypes a row's kernels run in follow from
    the row; the kernels took w's type as a second argument from 2026-11-27 evening on)."""
    return re.sub(r"(?:float|c10::BFloat16|c10::Half),\s*", "", name)


def print_comparison(bench, paths):
    """This run's default-form rows against the same rows of earlier runs' JSON (same card
    kind only means something): total ms and each kernel's ms, as now / then."""
    then = {}
    for path in paths:
        try:
            with open(path) as f:
                rows = json.load(f).get("results", [])
        except (OSError, ValueError) as e:
            print(f"[gpu_check] --compare: cannot read {path}: {e}")
            continue
        for r in rows:
            if r.get("kind") == "bench" and r.get("default") and r.get("status") == "OK":
                then[_bench_key(r)] = r
    print(f"\n== against {', '.join(paths)}: ms now / then (ratio) ==")
    for r in bench:
        old = then.get(_bench_key(r))
        if not (r.get("default") and r.get("status") == "OK" and old):
            continue
        shape = " ".join(f"{k}={r[k]}" for k in ("B", "T", "H", "C") if k in r)
        line = f"{r['op']:8s} {shape:26s} {r['dtype']:8s} {r['mode']:7s} {r['ms']} / {old['ms']} " \
               f"({r['ms'] / old['ms']:.2f})"
        kn = {_kernel_key(k): t for k, t in (r.get("kernels_ms") or {}).items()}
        ko = {_kernel_key(k): t for k, t in (old.get("kernels_ms") or {}).items()}
        ks = [f"{k} {kn[k]}/{ko[k]}" for k in kn if isinstance(kn[k], float)
              and isinstance(ko.get(k), float) and ko[k] > 0]
        if r.get("initial_state", True) != old.get("initial_state", True):  # earlier runs: with one
            line += " [initial state: " + ("yes" if r.get("initial_state", True) else "none") + " now]"
        print(line + ("  kernels: " + ", ".join(ks) if ks else ""))


def kernel_breakdown(fn):
    """{kernel: ms} of the extension's kernels in one call of fn(), from torch.profiler (which
    kernel of a forward+backward dominates: the forward, B1, B2, the chunk passes), plus the
    count and time of all other kernels, the host time of one call and (under "host top") the
    host ops with the most self CPU time; {"error": ...} if the profiler fails."""
    import re

    import torch

    try:
        from torch.profiler import ProfilerActivity, profile

        # Host time of one call (no synchronisation), before the profiler (which slows launches
        # while attached): when it exceeds the kernels' time, the GPU waits for Python and
        # launches, and that is what the timing measures.
        host = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            host.append((time.perf_counter() - t0) * 1e3)
            torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        out, other = {}, {"count": 0, "ms": 0.0}
        events = prof.key_averages()
        # Where the host time goes (self CPU time, inflated by the profiler; the ranking is the
        # point): the ops and calls to look at when the GPU waits for the host.
        top = sorted((ev for ev in events if ev.self_cpu_time_total > 0),
                     key=lambda ev: -ev.self_cpu_time_total)[:8]
        out["host top"] = [[ev.key[:60], ev.count, round(ev.self_cpu_time_total / 1e3, 4)] for ev in top]
        for ev in events:
            us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
            m = re.search(r"(wkv\d?_\w*kernel|chunk_combine_\w*kernel|point_\w*kernel)(<[^>]*>)?", ev.key)
            if m:
                key = m.group(0)
                out[key] = round(out.get(key, 0.0) + us / 1e3, 4)
            elif us and getattr(ev, "device_type", None) is not None and "CUDA" in str(ev.device_type):
                # every other kernel (casts, copies, fills): the op's cost beyond its own kernels
                other["count"] += ev.count
                other["ms"] = round(other["ms"] + us / 1e3, 4)
        out["other kernels"] = other
        out["host ms"] = round(statistics.median(host), 4)
        return out
    except Exception as e:  # the breakdown is a diagnostic: never fail the timing for it
        return {"error": f"{type(e).__name__}: {str(e)[:200]}"}


# fla's inference-only kernels (0.6.0: their backward raises NotImplementedError): forward
# timings and the error of y only.
FLA_FORWARD_ONLY = {"fla fused_recurrent_rwkv7"}


def fla_impls(op):
    """flash-linear-attention peers as (name, fn(x, grad) -> None), [] if fla is missing."""
    out = []
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if op == "wkv7":
                from fla.ops.rwkv7 import chunk_rwkv7, fused_recurrent_rwkv7

                # chunk_rwkv7 takes 16-token chunks unless told a lower bound of w that keeps its
                # 64-token tensor-core scheme in range: RWKV-7's w = -e^{-1/2} sigmoid(.) >= -0.6066.
                # That form first: the fla figure for B=8 is its, and each kernel's first
                # call of a shape compiles and autotunes (minutes in all on a fresh machine).
                for name, f, kw in (("fla chunk_rwkv7 (chunk 64)", chunk_rwkv7, {"lower_bound": -0.6066}),
                                    ("fla chunk_rwkv7", chunk_rwkv7, {}),
                                    ("fla fused_recurrent_rwkv7", fused_recurrent_rwkv7, {})):
                    out.append((name, lambda x, f=f, kw=kw: f(x["r"], x["w"], x["k"], x["v"], x["a"], x["b"],
                                                              scale=1.0, initial_state=x["state"],
                                                              output_final_state=True, **kw)))
            elif op == "wkv6":
                from fla.ops.rwkv6 import chunk_rwkv6

                out.append(("fla chunk_rwkv6", lambda x: chunk_rwkv6(
                    x["r"], x["k"], x["v"], x["w"], x["u"], scale=1.0, initial_state=x["state"],
                    output_final_state=True)))
    except Exception as e:  # missing, or failing to import (a Triton it does not support, ...)
        print(f"[gpu_check] flash-linear-attention not available ({type(e).__name__}: {e}); "
              f"to carry it to a GPU machine without it: {PEERS_HELP}", flush=True)
    return out


def bench_one(ctx, op, dt_name, B, T, H, N, emit, deadline, peers=False, phase="core"):
    """Times the extension's forms on one case, or (peers) flash-linear-attention's kernels.
    phase "core": the extension's default form in the issue's dtype of the op (the acceptance
    rows, all timed before anything else); "extra": the other forms and chunk lengths, and the
    other dtype."""
    import torch

    _, make_inputs, cb, _ = ctx
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dt_name]
    if op == "point_wkv" and not hasattr(cb, "point_scan"):
        return  # an extension without point_wkv's kernel
    # (name, fn, is the extension's default form): the form the extension picks and, in the
    # issue's dtype of the op, the other forms and chunk lengths around it (to tune the choice).
    ours = []
    forms = chunk_forms(cb, op, B, T, H, N)
    per_channel = op in ("wkv4", "bi_wkv4")
    tune = dt_name == TARGET_DTYPE.get(op, dt_name)
    for i, (form, chunk) in enumerate(forms):
        default = i == len(forms) - 1
        if not (tune or default):
            continue
        ours.append(("rwkv_hf cuda" + (f" ({form})" if form else ""),
                     lambda x, chunk=chunk: with_chunk(chunk, lambda: run_op(cb, op, x)), default))
        if chunk and tune:  # 1/2 and 2x the chunk length; per-channel ops 4x too, matrix-state
            # ops 3/4 too (about the length for 4 resident blocks per SM instead of 3)
            if per_channel:
                around = (chunk // 2, chunk * 2, chunk * 4)
            else:
                around = (chunk // 2 // 64 * 64, chunk * 3 // 4 // 64 * 64, chunk * 2)
            for c in dict.fromkeys(around):  # each once
                # at least 3 chunks (66 tokens at T=196 among them)
                if -(-T // c) >= 3 and c >= (8 if per_channel else 64):
                    ours.append((f"rwkv_hf cuda (chunk {c})",
                                 lambda x, c=c: with_chunk(c, lambda: run_op(cb, op, x)), False))
    if op == "bi_wkv6" and tune and hasattr(cb, "halves_concurrent"):
        # The default runs the two scans at once in the forward, one after the other in the
        # backward (halves_concurrent): against each way in both.
        name, fn, _ = next(o for o in ours if o[2])
        base = name[:-1] + ", " if name.endswith(")") else name + " ("
        for concurrent, how in ((True, "halves at once)"), (False, "halves in turn)")):
            ours.append((base + how, lambda x, f=fn, c=concurrent: with_halves(cb, c, lambda: f(x)),
                         False))
    if tune and len(ours) == 1 and op in ("wkv6", "wkv7", "bi_wkv6") and T >= 1024:
        c = max(64, T // 4 // 64 * 64)  # where the extension keeps one pass: would chunks win?
        ours.append((f"rwkv_hf cuda (chunk {c})",
                     lambda x, c=c: with_chunk(c, lambda: run_op(cb, op, x)), False))
    torch_ns = ctx[3]
    if op == "point_wkv" and torch_ns is not None:  # next to the torch backend's chunked form
        ours.append(("torch backend", lambda x: run_op(torch_ns, op, x), False))
    if peers:
        impls = [(name, f, False) for name, f in fla_impls(op)] if phase == "core" else []
    else:
        core = [o for o in ours if (o[2] or o[0] == "torch backend") and tune]
        impls = core if phase == "core" else [o for o in ours if o not in core]
    if not impls:
        return
    x = make_inputs(op, B, T, H, N, dtype=dt, device=DEVICE, state=True, seed=5)
    # The bidirectional ops run as Vision-RWKV runs them, and as the official kernels they are
    # compared with work: from no initial state (what rwkv_hf.ops passes the backend then);
    # point_wkv as PointRWKV runs it, from none too.
    stateless = op in ("bi_wkv4", "bi_wkv6", "point_wkv")
    if stateless:
        x["state"] = empty_v4_state(x["state"]) if op == "bi_wkv4" else None
    shape = {"B": B, "T": T, "H": H, "N": N} if op not in ("bi_wkv4",) else {"B": B, "T": T, "C": H * N}
    for name, f, default in impls:
        for mode in ("fwd", "fwd+bwd"):
            rec = {"kind": "bench", "op": op, "impl": name, "dtype": dt_name, "mode": mode, **shape,
                   "initial_state": not stateless}
            if default:
                rec["default"] = True
            left = deadline - time.time()
            if left < 3 or (mode == "fwd+bwd" and name in FLA_FORWARD_ONLY):
                rec.update(status="SKIP", why="time budget" if left < 3 else "inference-only kernel")
                emit(rec)
                continue
            try:
                if mode == "fwd":
                    xs = {n: t if t is None else t.detach() for n, t in x.items()}

                    def fn():
                        with torch.no_grad():
                            f(xs)
                else:
                    grad_state = name.startswith("rwkv_hf") and not stateless
                    xs = {n: t if t is None else t.detach().requires_grad_(n != "state" or grad_state)
                          for n, t in x.items()}
                    inputs = [t for n, t in xs.items() if n != "state" or grad_state]

                    def fn():
                        y = f(xs)[0]
                        torch.autograd.grad(y, inputs, torch.ones_like(y), allow_unused=True)
                ms = cuda_time(fn, budget_s=min(0.6, left / 3))
                rec.update(status="OK", ms=round(ms, 4),
                           Mtok_per_s=round(B * T / ms / 1e3, 2))
                if default and deadline - time.time() > 5:
                    rec["kernels_ms"] = kernel_breakdown(fn)
                    rec["host_top"] = rec["kernels_ms"].pop("host top", None)
            except Exception as e:
                rec.update(status="ERROR", why=f"{type(e).__name__}: {str(e)[:300]}")
                emit(rec)
                if "illegal" in str(e):
                    raise
                continue
            emit(rec)
    del x
    torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- accuracy vs fla

def rms_rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-300)).item()


def first_config_autotune():
    """Makes Triton's autotuners (in this process: the accuracy section's) run each kernel's
    first config instead of compiling and timing every one: on a fresh machine fla's autotuning
    took minutes per shape, and the 2026-11-28 run's accuracy section ran out of time in it.
    fla's configs set tile sizes, warps and pipeline stages; which one runs can change the order
    of float32 sums, not what is stored in bf16 (the rows say "first config"). True if
    applied."""
    try:
        from triton.runtime import autotuner
    except Exception:
        return False
    prune = autotuner.Autotuner.prune_configs
    if getattr(prune, "first_only", False):
        return True

    def first(self, kwargs):
        return prune(self, kwargs)[:1]

    first.first_only = True
    autotuner.Autotuner.prune_configs = first
    return True


def check_accuracy(ctx, emit, deadline):
    """bfloat16 error against float64 of the extension and of fla's kernels, on the same inputs
    and upstream gradient: y and the gradient of every input (initial state included), as
    max|a-b|/max|b| and as RMS(a-b)/RMS(b) (the issue asks for an error no worse than fla's)."""
    import torch

    reference, make_inputs, cb, torch_ns = ctx
    oracle = torch_ns if torch_ns is not None else reference
    # The extension's errors first: fla's first calls compile (and autotune, below). Then fla's
    # chunk_rwkv6, which no run has reached yet, before its three RWKV-7 kernels.
    untuned = first_config_autotune()
    B, T, H, N = 2, 1024, 4, 64
    cases = {}  # op -> (bf16 inputs, float64 y, upstream gradient, float64 gradients)
    for op, peers in (("wkv7", False), ("wkv6", False), ("wkv6", True), ("wkv7", True)):
        impls = fla_impls(op) if peers else [("rwkv_hf cuda", lambda x, op=op: run_op(cb, op, x))]
        if not impls:
            continue
        if op not in cases:
            x16 = make_inputs(op, B, T, H, N, dtype=torch.bfloat16, device=DEVICE, state=True, seed=11)
            x64 = {n: t.double().requires_grad_() for n, t in x16.items()}
            y64 = run_op(oracle, op, x64)[0]
            g = torch.Generator(device=DEVICE).manual_seed(12)
            gy = torch.randn(y64.shape, generator=g, device=DEVICE, dtype=torch.float64).to(torch.bfloat16).double()
            cases[op] = x16, y64.detach(), gy, torch.autograd.grad(y64, list(x64.values()), gy)
        x16, y64, gy, want = cases[op]
        names = list(x16)
        for name, f in impls:
            rec = {"kind": "accuracy", "op": op, "impl": name, "dtype": "bfloat16", "B": B, "T": T,
                   "H": H, "N": N}
            if peers and untuned:
                rec["autotune"] = "first config"
            if time.time() > deadline:
                rec.update(status="SKIP", why="time budget")
                emit(rec)
                continue
            try:
                x = {n: (t.float() if n == "state" else t).detach().requires_grad_() for n, t in x16.items()}
                y = f(x)[0]
                if name in FLA_FORWARD_ONLY:
                    got, rec["forward_only"] = [None] * len(names), True
                else:
                    got = torch.autograd.grad(y, [x[n] for n in names], gy.to(y.dtype), allow_unused=True)
                em, er = {"y": rel(y, y64)}, {"y": rms_rel(y, y64)}
                for n, a, b in zip(names, got, want):
                    if a is not None:
                        em["d" + n], er["d" + n] = rel(a, b), rms_rel(a, b)
                rec.update(status="OK", errs_max={k: float(f"{v:.3g}") for k, v in em.items()},
                           errs_rms={k: float(f"{v:.3g}") for k, v in er.items()},
                           worst_max=max(em.values()), worst_rms=max(er.values()))
            except Exception as e:
                rec.update(status="ERROR", why=f"{type(e).__name__}: {str(e)[:300]}")
            emit(rec)


# ---------------------------------------------------------------------------- models

def _with_backend(name, fn):
    """fn() with the process-wide WKV backend set to ``name`` (None: the default dispatch)."""
    from rwkv_hf import ops

    old = os.environ.get(ops.BACKEND_ENV)
    if name is None:
        os.environ.pop(ops.BACKEND_ENV, None)
    else:
        os.environ[ops.BACKEND_ENV] = name
    try:
        return fn()
    finally:
        if old is None:
            os.environ.pop(ops.BACKEND_ENV, None)
        else:
            os.environ[ops.BACKEND_ENV] = old


def _model_cases():
    """(name, builder) of one model per family: builder() -> (model on DEVICE, kind, inputs)."""
    import torch

    def fill_zero_matrices(model):
        """The official inits zero some projections: give every weight matrix a value, so that
        every gradient is checked."""
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2 and not p.any():
                    p.normal_(0, 0.02)
        return model

    from rwkv_hf.lm import RWKV_LM_CLASSES
    from rwkv_hf.pretrained import tiny_model_path, tiny_vision_model_path
    from transformers import AutoModelForCausalLM, AutoModelForImageClassification

    def lm_pretrained():
        model = AutoModelForCausalLM.from_pretrained(tiny_model_path())
        ids = torch.randint(1, model.config.vocab_size, (2, 300), generator=torch.Generator().manual_seed(0))
        return model, "lm", ids

    def lm_random(version):
        def build():
            config_cls, _, causal_cls, _ = RWKV_LM_CLASSES[version]
            torch.manual_seed(version)
            model = fill_zero_matrices(causal_cls(config_cls(vocab_size=1000, hidden_size=128, num_hidden_layers=2)))
            ids = torch.randint(1, 1000, (2, 300), generator=torch.Generator().manual_seed(0))
            return model, "lm", ids
        return build

    def vision(version):
        def build():
            from PIL import Image
            from safetensors.torch import load_file
            from transformers import AutoImageProcessor

            path = tiny_vision_model_path(version)
            model = AutoModelForImageClassification.from_pretrained(path)
            data = load_file(os.path.join(path, "heldout.safetensors"))
            images = [Image.fromarray(im.numpy()).convert("RGB") for im in data["images"]]
            pixels = AutoImageProcessor.from_pretrained(path)(images, return_tensors="pt")["pixel_values"]
            return model, "vision", (pixels, data["labels"])
        return build

    def restore():
        from safetensors.torch import load_file
        from transformers import AutoModelForImageToImage

        from rwkv_hf.pretrained import tiny_restore_model_path

        path = tiny_restore_model_path()
        data = load_file(os.path.join(path, "heldout.safetensors"))
        noisy, clean = data["noisy"], data["clean"].float() / 255
        # the batch of two: the crop and its mirror image, cropped to sides that are not
        # multiples of 8 (padded inside)
        noisy, clean = (torch.cat([x, x.flip(-1)])[..., :190, :187] for x in (noisy, clean))
        return AutoModelForImageToImage.from_pretrained(path), "restore", (noisy, clean)

    def clip():
        from rwkv_hf.clip import RwkvClipConfig, RwkvClipModel, RwkvClipTextConfig
        from rwkv_hf.vision import Vrwkv6Config

        torch.manual_seed(0)
        # config objects, not dicts: transformers before 5.24 (a GPU image's) does not build
        # sub-configs from dicts through `sub_configs_defaults`
        config = RwkvClipConfig(
            vision_config=Vrwkv6Config(image_size=224, patch_size=32, hidden_size=128, num_hidden_layers=2,
                                       head_size=64),
            text_config=RwkvClipTextConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2,
                                           intermediate_size=448, head_size=64))
        model = fill_zero_matrices(RwkvClipModel(config))
        g = torch.Generator().manual_seed(0)
        ids, pixels = torch.randint(1, 1000, (4, 30), generator=g), torch.randn(4, 3, 224, 224, generator=g)
        return model, "clip", (ids, pixels)

    def point():
        # ops.point_wkv's two scans run in the extension's kernels (point_scan, the default
        # dispatch on CUDA; 2 heads of 48, the released head size); the whole model runs on
        # the GPU (sampling, grouping, graph branch) against the torch backend and against the
        # same model on the CPU
        from rwkv_hf.point import PointRwkvConfig, PointRwkvForPointCloudClassification

        torch.manual_seed(0)
        config = PointRwkvConfig(hidden_size=96, depths=[1, 1], num_heads=2, num_groups=[128, 64],
                                 group_sizes=[16, 16], k_neighbors=[8, 8], graph_iterations=2, num_labels=5)
        points = torch.randn(2, 512, 3, generator=torch.Generator().manual_seed(0))
        return PointRwkvForPointCloudClassification(config), "point", (points, torch.tensor([1, 3]))

    def point_parts():
        # the shipped tiny part segmenter (real weights; 2 heads of 16, sampling through the
        # extension's fps kernel) on its held-out objects
        from safetensors.torch import load_file

        from rwkv_hf.point import PointRwkvForPointCloudSegmentation
        from rwkv_hf.pretrained import tiny_point_model_path

        path = tiny_point_model_path("segment")
        data = load_file(os.path.join(path, "heldout.safetensors"))
        return PointRwkvForPointCloudSegmentation.from_pretrained(path), "point_seg", \
            (data["points"], data["categories"], data["parts"])

    return [("RWKV-7 tiny-rwkv7-pydoc", lm_pretrained)] + \
        [(f"RWKV-{v} random 2x128", lm_random(v)) for v in (4, 5, 6)] + \
        [(f"VRWKV{'6' if v == 6 else ''} tiny digits", vision(v)) for v in (4, 6)] + \
        [("Restore-RWKV tiny denoiser", restore), ("RWKV-CLIP random 2x128", clip),
         ("PointRWKV random 2x64", point), ("PointRWKV tiny part segmenter", point_parts)]


def check_models(emit, deadline):
    import torch

    try:
        cases = _model_cases()
    except Exception as e:
        emit({"kind": "model", "model": "(import)", "status": "ERROR", "why": f"{type(e).__name__}: {e}"})
        return
    # Full float32: cuDNN's float32 convolutions default to TF32 (10 mantissa bits), and the
    # convolutions after Restore-RWKV's WKV layers turn the backends' 1e-7 differences into 1e-4
    # in the output and 1e-1 in a weight's gradient (H200, 2026-11-28: 8.5e-5 / 8.3e-2; on the CPU
    # with the convolutions' operands rounded to TF32: 1.1e-4 / 6.7e-2; in float32: 3.8e-7 /
    # 3.4e-5). This section compares the WKV backends, not that rounding.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    # The default dispatch on CUDA is the extension (emulated: asked for by name; reference
    # self-test: the cpu backend stands in).
    fast = {"": None, "emulated": "cuda"}.get(SELFTEST, "cpu")
    for name, build in cases:
        if time.time() > deadline:
            emit({"kind": "model", "model": name, "status": "SKIP", "why": "time budget"})
            continue
        try:
            model, kind, inputs = build()
            model = model.to(DEVICE).train(False)

            def forward():
                if kind == "lm":
                    out = model(inputs.to(DEVICE), labels=inputs.to(DEVICE), use_cache=False)
                elif kind == "clip":
                    out = model(input_ids=inputs[0].to(DEVICE), pixel_values=inputs[1].to(DEVICE), return_loss=True)
                    return out.loss, out.logits_per_image
                elif kind == "point":
                    out = model(points=inputs[0].to(DEVICE), labels=inputs[1].to(DEVICE))
                elif kind == "point_seg":
                    out = model(points=inputs[0].to(DEVICE), categories=inputs[1].to(DEVICE),
                                labels=inputs[2].to(DEVICE))
                else:
                    out = model(pixel_values=inputs[0].to(DEVICE), labels=inputs[1].to(DEVICE))
                return out.loss, out.reconstruction if kind == "restore" else out.logits

            def run(fwd=forward):
                model.zero_grad(set_to_none=True)
                loss, logits = fwd()
                loss.backward()
                grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
                return logits.detach(), grads

            (la, ga), (lb, gb) = _with_backend(fast, run), _with_backend("torch", run)
            detail = {"logits": rel(la, lb), "grads": max(rel(ga[n], gb[n]) for n in gb)}
            ok = detail["logits"] <= MODEL_TOL["logits"] and detail["grads"] <= MODEL_TOL["grads"]
            if name == cases[0][0]:
                # torch.compile traces the model through the extension's operators in one graph
                # (aot_eager: the whole trace, no code generation) and matches eager mode.
                torch.compiler.reset()
                step = torch.compile(forward, fullgraph=True, backend="aot_eager")
                lc, gc = _with_backend(fast, lambda: run(step))
                detail["compiled"] = max(rel(lc, la), max(rel(gc[n], ga[n]) for n in ga))
                ok = ok and detail["compiled"] <= MODEL_TOL["grads"]
            with torch.no_grad():
                if kind == "lm":
                    prompt = inputs[:1, :12].to(DEVICE)

                    def gen():
                        return model.generate(prompt, max_new_tokens=24, do_sample=False, eos_token_id=None,
                                              pad_token_id=0).tolist()
                    same = _with_backend(fast, gen) == _with_backend("torch", gen)
                    detail["generate_equal"] = same
                elif kind == "restore":
                    from rwkv_hf.pretrained.denoise import psnr

                    def score():
                        return psnr(model(pixel_values=inputs[0].to(DEVICE)).reconstruction.cpu(), inputs[1])
                    a, b = _with_backend(fast, score), _with_backend("torch", score)
                    detail["psnr_db"] = (round(a, 3), round(b, 3))
                    same = abs(a - b) < 1e-3
                elif kind == "point_seg":  # ShapeNetPart's metrics, each backend, and eval.json's (CPU)
                    from rwkv_hf.pretrained.shapes import part_scores

                    def miou():
                        logits = model(points=inputs[0].to(DEVICE), categories=inputs[1].to(DEVICE)).logits
                        return part_scores(logits.cpu(), inputs[1], inputs[2])["heldout_instance_miou"]
                    a, b = _with_backend(fast, miou), _with_backend("torch", miou)
                    with open(os.path.join(model.name_or_path, "eval.json")) as f:
                        recorded = json.load(f)["heldout_instance_miou"]
                    detail["miou"] = (round(a, 5), round(b, 5), round(recorded, 5))
                    same = abs(a - b) < 1e-3 and abs(a - recorded) < 1e-2
                elif kind == "point":  # the same model on the CPU (float32): the device changes nothing
                    with torch.no_grad():
                        cpu = type(model)(model.config).eval()
                        cpu.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
                        on_cpu = cpu(points=inputs[0]).logits
                    detail["cpu_vs_gpu"] = rel(model(points=inputs[0].to(DEVICE)).logits.cpu(), on_cpu)
                    same = detail["cpu_vs_gpu"] <= MODEL_TOL["logits"]
                elif kind == "clip":
                    def ranking():  # each image's texts, most similar first
                        logits = model(input_ids=inputs[0].to(DEVICE), pixel_values=inputs[1].to(DEVICE))
                        return logits.logits_per_image.argsort(-1, descending=True).tolist()
                    same = _with_backend(fast, ranking) == _with_backend("torch", ranking)
                    detail["ranking_equal"] = same
                else:
                    def acc():
                        pred = model(pixel_values=inputs[0].to(DEVICE)).logits.argmax(-1).cpu()
                        return (pred == inputs[1]).float().mean().item()
                    a, b = _with_backend(fast, acc), _with_backend("torch", acc)
                    detail["accuracy"] = (round(a, 4), round(b, 4))
                    same = a == b
            ok = ok and same
            emit({"kind": "model", "model": name, "status": "PASS" if ok else "FAIL",
                  "detail": {k: (f"{v:.2e}" if isinstance(v, float) else v) for k, v in detail.items()}})
        except Exception as e:
            emit({"kind": "model", "model": name, "status": "ERROR", "why": f"{type(e).__name__}: {e}"[:400]})
            traceback.print_exc()
        if not SELFTEST:
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- CUDA graphs

# (op, dtype, B, T, H, N, from an initial state): a decoding step of each causal op, the
# chunk-parallel forms (several launches and scratch buffers), the bidirectional ops as
# Vision-RWKV-T at 224 runs them (bi_wkv6's forward: its second scan on a second stream).
GRAPH_CASES = [("wkv7", "bfloat16", 4, 1, 32, 64, True), ("wkv7", "bfloat16", 1, 2048, 32, 64, True),
               ("wkv6", "bfloat16", 4, 1, 32, 64, True), ("wkv6", "bfloat16", 1, 2048, 32, 64, True),
               ("wkv4", "float32", 4, 1, 12, 64, True), ("bi_wkv4", "float32", 64, 196, 3, 64, False),
               ("bi_wkv6", "float32", 64, 196, 3, 64, False)]
GRAPH_TOL = 1e-6  # the same kernels (no atomics) on the same inputs: expected bit for bit equal


def check_graphs(ctx, emit, deadline):
    """Each GRAPH_CASES op captured in CUDA graphs, forward (``torch.cuda.graph``) and
    forward+backward (``torch.cuda.make_graphed_callables``), replayed on new inputs copied
    into the captured ones: y, the final state and every gradient against eager mode on those
    inputs; and the replays timed against eager mode (the host time a graph saves)."""
    import torch

    _, make_inputs, cb, _ = ctx
    for op, dt_name, B, T, H, N, from_state in GRAPH_CASES:
        rec = {"kind": "graph", "op": op, "dtype": dt_name, "B": B, "T": T,
               **({"C": H * N} if op in ("wkv4", "bi_wkv4") else {"H": H, "N": N})}
        if SELFTEST:
            emit({**rec, "status": "SKIP", "why": "CUDA graphs need a GPU"})
            continue
        if time.time() > deadline - 5:
            emit({**rec, "status": "SKIP", "why": "time budget"})
            continue
        try:
            dt = getattr(torch, dt_name)

            def inputs(seed):
                x = make_inputs(op, B, T, H, N, dtype=dt, device=DEVICE, state=True, seed=seed)
                if not from_state:
                    x["state"] = None if op == "bi_wkv6" else empty_v4_state(x["state"])
                return x

            x0, x1 = inputs(21), inputs(22)
            # forward: captured on x0, replayed after x1 is copied in
            static = {n: t if t is None else t.clone() for n, t in x0.items()}
            warm = torch.cuda.Stream()
            warm.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(warm), torch.no_grad():
                for _ in range(3):
                    run_op(cb, op, static)
            torch.cuda.current_stream().wait_stream(warm)
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graph):
                y_g, s_g = run_op(cb, op, static)
            for n, t in x1.items():
                if t is not None:
                    static[n].copy_(t)
            graph.replay()
            with torch.no_grad():
                y_e, s_e = run_op(cb, op, x1)
            errs = {"y": rel(y_g, y_e), "state": rel(s_g, s_e)}

            # forward+backward: the inputs that take a gradient as the graphed function's
            # arguments (the others, the same for x0 and x1, closed over)
            names = [n for n, t in x0.items() if t is not None and (n != "state" or from_state)]
            fixed = {n: t for n, t in x0.items() if n not in names}

            def f(*ts):  # -> (y, final state): the loss reads both
                return tuple(run_op(cb, op, {**fixed, **dict(zip(names, ts))}))

            def leaves(x):
                return tuple(x[n].detach().clone().requires_grad_() for n in names)

            graphed = torch.cuda.make_graphed_callables(f, leaves(x0))
            gen = torch.Generator(device=DEVICE).manual_seed(23)
            gy = torch.randn(y_e.shape, generator=gen, device=DEVICE).to(y_e.dtype)
            gs = torch.randn(s_e.shape, generator=gen, device=DEVICE)
            if op in ("wkv4", "bi_wkv4"):
                gs.select(-2, 2).zero_()  # the logscale is bookkeeping, not a value to differentiate
            a_g, a_e = leaves(x1), leaves(x1)
            got = torch.autograd.grad(graphed(*a_g), a_g, (gy, gs))
            want = torch.autograd.grad(f(*a_e), a_e, (gy, gs))
            errs.update({"d" + n: rel(a, b) for n, a, b in zip(names, got, want)})
            worst = max(errs, key=lambda k: errs[k] if errs[k] == errs[k] else float("inf"))
            ok = all(e <= GRAPH_TOL for e in errs.values())  # NaN fails

            def eager_fwd():
                with torch.no_grad():
                    run_op(cb, op, static)

            budget = max(0.05, min(0.3, (deadline - time.time()) / 20))
            ms = {"fwd eager": cuda_time(eager_fwd, budget),
                  "fwd graph": cuda_time(graph.replay, budget),
                  "fwd+bwd eager": cuda_time(lambda: torch.autograd.grad(f(*a_e), a_e, (gy, gs)), budget),
                  "fwd+bwd graph": cuda_time(lambda: torch.autograd.grad(graphed(*a_g), a_g, (gy, gs)),
                                             budget)}
            emit({**rec, "status": "PASS" if ok else "FAIL", "worst": worst,
                  "max_err": float(f"{errs[worst]:.3g}"), "ms": {k: round(v, 4) for k, v in ms.items()}})
        except Exception as e:
            emit({**rec, "status": "ERROR", "why": f"{type(e).__name__}: {e}"[:400]})
            traceback.print_exc()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- sections

def graph_line(r):
    shape = " ".join(f"{k}={r[k]}" for k in ("B", "T", "H", "C") if k in r)
    return (f"{r['op']:8s} {r['dtype']:8s} {shape:22s} {r['status']:5s} "
            f"{(r['worst'] + '=' + str(r['max_err'])) if 'worst' in r else '':>16s} "
            f"{r.get('ms', '')} {r.get('why', '')}")


# ---------------------------------------------------------------------------- farthest point sampling

# (B, N, n): PointRWKV's ModelNet40 sampling (8192 points, 2048 centres), training batches of
# 1024-point clouds, an odd size; the self-tests (CPU, emulated kernels) take small ones.
FPS_CASES = [(1, 8192, 2048), (8, 1024, 512), (32, 1024, 512), (4, 3000, 1000)]
FPS_SELFTEST_CASES = [(2, 300, 100), (1, 2100, 20)]


def check_fps(ctx, emit, deadline):
    import torch

    from rwkv_hf.ops.random_inputs import rounding_ties

    reference, _, cb = ctx[:3]
    if SELFTEST == "1":  # no extension: the compiled CPU kernel stands in
        from rwkv_hf.ops import cpu_backend as cb
    kernel, loop = cb.farthest_point_sample, reference.farthest_point_sample
    g = torch.Generator().manual_seed(0)
    cases = [(f"random B={B} N={N} n={n} float32", torch.randn(B, N, 3, generator=g) * 3, n, True)
             for B, N, n in (FPS_SELFTEST_CASES if SELFTEST else FPS_CASES)]
    cases.append(("random B=2 N=1000 n=300 float64", torch.randn(2, 1000, 3, generator=g, dtype=torch.float64), 300,
                  False))
    grid = torch.stack(torch.meshgrid(*[torch.arange(9.0)] * 3, indexing="ij"), -1).reshape(1, -1, 3)
    cases.append(("grid 9^3 (ties), two orders", torch.cat([grid, grid.flip(1)]), 200, False))
    cases.append(("rounding ties", rounding_ties(64), 2, False))
    for name, points, n, timed in cases:
        if time.time() > deadline:
            emit({"kind": "fps", "case": name, "status": "SKIP", "why": "time budget"})
            continue
        try:
            p = points.to(DEVICE)
            got, want = kernel(p, n).cpu(), loop(p, n).cpu()
            detail = {"equal": torch.equal(got, want),
                      # the CPU's torch form (the roundings the kernels follow) on the same clouds
                      "equal_cpu_torch_form": torch.equal(got, loop(points, n))}
            if name == "rounding ties":
                detail["kernel_picks_first"] = bool(got[:, 1].eq(1).all())
            if timed and not SELFTEST:
                detail["kernel_ms"] = round(cuda_time(lambda: kernel(p, n), budget_s=1.5), 3)
                detail["torch_ms"] = round(cuda_time(lambda: loop(p, n), budget_s=1.5, max_reps=5), 3)
                detail["speedup"] = round(detail["torch_ms"] / detail["kernel_ms"], 1)
            emit({"kind": "fps", "case": name, "status": "PASS" if detail["equal"] else "FAIL", "detail": detail})
        except Exception as e:
            emit({"kind": "fps", "case": name, "status": "ERROR", "why": f"{type(e).__name__}: {e}"[:400]})
            traceback.print_exc()


def run_section(section, results_path, deadline):
    import torch

    def emit(rec):
        with open(results_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if rec["kind"] == "model":
            print(f"  {rec['model']:34s} {rec['status']:5s} {rec.get('detail', '')} {rec.get('why', '')}",
                  flush=True)
        elif rec["kind"] == "graph":
            print(f"  {graph_line(rec)}", flush=True)
        elif rec["kind"] == "fps":
            print(f"  {rec['case']:34s} {rec['status']:5s} {rec.get('detail', '')} {rec.get('why', '')}", flush=True)
        elif rec["kind"] == "accuracy":
            print(f"  {rec['op']:8s} {rec['impl']:26s} bf16 {rec['status']:5s} worst max-rel "
                  f"{rec.get('worst_max', '-')} worst rms-rel {rec.get('worst_rms', '-')} "
                  f"{rec.get('why', '')}", flush=True)
        elif rec["kind"] == "correct":
            print(f"  {rec['op']:8s} {rec['dtype']:8s} B={rec['B']} T={rec['T']:<6d} H={rec['H']} "
                  f"N={rec['N']:<3d} {rec.get('form', ''):11s} {rec['status']:5s} "
                  f"{rec.get('worst', '')}={rec.get('max_err', '')} "
                  f"{rec.get('why', '')}", flush=True)
        else:
            print(f"  {rec['op']:8s} {rec['impl']:26s} {rec['dtype']:8s} {rec['mode']:7s} "
                  f"{ {k: rec[k] for k in ('B', 'T', 'H', 'C', 'N') if k in rec} } "
                  f"{rec['status']} {rec.get('ms', '')} ms {rec.get('why', '')}", flush=True)

    ctx = import_package()
    ctx[2].load()  # built by the parent: this finds the cached module
    torch.manual_seed(0)
    if section == "models":
        check_models(emit, deadline)
    elif section == "graphs":
        check_graphs(ctx, emit, deadline)
    elif section == "fps":
        check_fps(ctx, emit, deadline)
    elif section == "accuracy":
        check_accuracy(ctx, emit, deadline)
    elif section.startswith("correct"):
        for case in correctness_cases(section):
            if time.time() > deadline:
                emit({"kind": "correct", "op": case[0], "dtype": "-", "B": case[1], "T": case[2],
                      "H": case[3], "N": case[4], "status": "SKIP", "why": "time budget"})
                continue
            check_one(ctx, *case, emit=emit, deadline=deadline)
            if not SELFTEST:
                torch.cuda.empty_cache()
    else:
        for phase in ("core", "extra"):
            for case in bench_cases(section):
                bench_one(ctx, *case, emit=emit, deadline=deadline, peers=section == "bench_fla",
                          phase=phase)


# ---------------------------------------------------------------------------- driver

def export_autotune(out_dir):
    """Copies Triton's autotuning choices (``<cache key>/<kernel>.autotune.json``) from
    $TRITON_CACHE_DIR to ``out_dir/triton_autotune`` (see TRITON_CACHE)."""
    import shutil

    src = os.environ.get("TRITON_CACHE_DIR")
    if not src or not os.path.isdir(src):
        return
    n = 0
    for root, _, files in os.walk(src):
        for name in files:
            if name.endswith(".autotune.json"):
                rel_dir = os.path.relpath(root, src)
                os.makedirs(os.path.join(out_dir, "triton_autotune", rel_dir), exist_ok=True)
                shutil.copy2(os.path.join(root, name), os.path.join(out_dir, "triton_autotune", rel_dir, name))
                n += 1
    if n:
        print(f"[gpu_check] {n} Triton autotuning choices in {os.path.join(out_dir, 'triton_autotune')} "
              f"(copy into {TRITON_CACHE} for the next run)", flush=True)


def summarize(report, compare=None):
    """Prints the tables of a run's report (correctness, accuracy, timings, the issue's targets,
    models, CUDA graphs; ``compare``: earlier JSON files) and returns (passed, failed)."""
    corr = [r for r in report["results"] if r["kind"] == "correct"]
    bench = [r for r in report["results"] if r["kind"] == "bench"]
    # side by side: each case's rows together (the peers were timed in a later section)
    order = {}
    for r in bench:
        order.setdefault((r["op"], r["dtype"], r.get("B"), r.get("T"), r.get("H"), r.get("C")), len(order))
    bench.sort(key=lambda r: (order[(r["op"], r["dtype"], r.get("B"), r.get("T"), r.get("H"), r.get("C"))],
                              r["mode"]))
    print("\n== correctness (max|a-b|/max|b| vs float64; tol 1e-5 fp32, 1e-2 bf16) ==")
    print(f"{'op':9s} {'dtype':8s} {'B':>2s} {'T':>6s} {'H':>2s} {'N':>3s} {'form':11s} {'oracle':9s} "
          f"{'y':>8s} {'state':>8s} {'worst grad':>16s} status")
    for r in corr:
        e = r.get("errs", {})
        gk = [k for k in e if k.startswith("d")]
        wg = max(gk, key=lambda k: e[k] if isinstance(e[k], float) else 1e9) if gk else ""
        print(f"{r['op']:9s} {r['dtype']:8s} {r['B']:2d} {r['T']:6d} {r['H']:2d} {r['N']:3d} "
              f"{r.get('form', ''):11s} {r.get('oracle', '-'):9s} {str(e.get('y', '-')):>8s} {str(e.get('state', '-')):>8s} "
              f"{(wg + '=' + str(e.get(wg, ''))) if wg else '-':>16s} {r['status']} {r.get('why', '')}")
    n_pass = sum(r["status"] == "PASS" for r in corr)
    n_fail = sum(r["status"] in ("FAIL", "ERROR") for r in corr)
    print(f"correctness: {n_pass} PASS, {n_fail} FAIL/ERROR, "
          f"{sum(r['status'] == 'SKIP' for r in corr)} SKIP")
    acc = [r for r in report["results"] if r["kind"] == "accuracy"]
    if acc:
        print("\n== bfloat16 accuracy against float64 (worst over y and every gradient) ==")
        for r in acc:
            print(f"{r['op']:8s} B={r['B']} T={r['T']} H={r['H']} {r['impl']:28s} "
                  f"max-rel {r.get('worst_max', '-')!s:>10s}  rms-rel {r.get('worst_rms', '-')!s:>10s} "
                  f"{r['status']} {r.get('why', '')}")
    print("\n== timing (median ms, CUDA events) ==")
    for r in bench:
        shape = " ".join(f"{k}={r[k]}" for k in ("B", "T", "H", "C") if k in r)
        print(f"{r['op']:8s} {shape:26s} {r['dtype']:8s} {r['mode']:7s} {r['impl']:26s} "
              f"{(str(r['ms']) + ' ms') if 'ms' in r else r['status'] + ' ' + r.get('why', '')}"
              + (f"  kernels: {r['kernels_ms']}" if r.get("kernels_ms") else ""))
    ratios = point_ratios(bench)
    if ratios:
        report["point_ratios"] = ratios
        print("\n== point_wkv: the extension against the torch backend, ms (torch / extension) ==")
        for r in ratios:
            print(f"B={r['B']} T={r['T']} H={r['H']} N={r['N']} {r['dtype']:8s} {r['mode']:7s} "
                  f"{r['cuda_ms']} / {r['torch_ms']} ({r['speedup']}x)")
    if compare:
        print_comparison(bench, compare.split(","))
    targets = target_rows(bench)
    report["targets"] = targets
    print("\n== issue 5 targets: the extension's default form against the faster peer (LM rows, "
          "bf16) / the official kernels (bidirectional rows, fp32), ms ==")
    for t in targets:
        print(f"{t['op']:8s} B={t['B']:<3d} T={t['T']:<6d} {'C' if t['op'].startswith('bi_') else 'H'}="
              f"{t['H_or_C']:<4d} {t['dtype']:8s} fwd {t['fwd']!s:>8s} / {t['target'][0]:<7g} "
              f"fwd+bwd {t['fwd+bwd']!s:>8s} / {t['target'][1]:<7g} {t['status']}")
    models = [r for r in report["results"] if r["kind"] == "model"]
    print(f"\n== models: the extension against the torch backend on {DEVICE} "
          f"(tol logits {MODEL_TOL['logits']:g}, grads {MODEL_TOL['grads']:g}) ==")
    for r in models:
        print(f"{r['model']:34s} {r['status']:5s} {r.get('detail', '')} {r.get('why', '')}")
    n_fail += sum(r["status"] in ("FAIL", "ERROR") for r in models)
    fps = [r for r in report["results"] if r["kind"] == "fps"]
    if fps:
        print("\n== farthest point sampling: the kernel against the torch form on the same device "
              "(equal indices); ms kernel / torch form ==")
        for r in fps:
            print(f"{r['case']:34s} {r['status']:5s} {r.get('detail', '')} {r.get('why', '')}")
        n_fail += sum(r["status"] in ("FAIL", "ERROR") for r in fps)
    graphs = [r for r in report["results"] if r["kind"] == "graph"]
    if graphs:
        print(f"\n== CUDA graphs: replays on new inputs against eager mode (tol {GRAPH_TOL:g}); "
              "ms eager / graph ==")
        for r in graphs:
            print(graph_line(r))
        n_fail += sum(r["status"] in ("FAIL", "ERROR") for r in graphs)
    for e in report["errors"]:
        print("error:", e)
    return n_pass + sum(r["status"] == "PASS" for r in models + graphs + fps), n_fail


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--section", help=argparse.SUPPRESS)
    ap.add_argument("--results", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--only", help="comma-separated sections to run (default: all)")
    ap.add_argument("--compare", help="comma-separated JSON files of earlier runs: print this run's "
                                      "default-form timings and kernel times against theirs")
    ap.add_argument("--report", help="print the tables of a saved JSON (e.g. of a run stopped before "
                                     "its summary) and exit; with --compare as above")
    args = ap.parse_args()
    if args.section:
        run_section(args.section, args.results, args.deadline)
        return 0
    if args.report:
        with open(args.report) as f:
            summarize(json.load(f), args.compare)
        return 0

    start = time.time()
    import faulthandler

    # never hang; the sections end by TOTAL_BUDGET_S + 5 (below), then the summary
    faulthandler.dump_traceback_later(TOTAL_BUDGET_S + 30, exit=True)
    out_dir = os.environ.get("OUT") or os.getcwd()
    os.makedirs(out_dir, exist_ok=True)
    out_json = os.path.join(out_dir, "gpu_check.json")
    report = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "build": {}, "results": [], "errors": []}

    def save():
        with open(out_json, "w") as f:
            json.dump(report, f, indent=1)

    import torch

    report["env"] = {"python": sys.version.split()[0], "torch": torch.__version__,
                     "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        report["env"].update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                             memory_gib=round(p.total_memory / 2**30, 1))
    from importlib import metadata

    try:  # the models section runs on the machine's transformers, whatever setup.py asks for
        report["env"]["transformers"] = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        report["env"]["transformers"] = None
    try:
        import fla

        report["env"]["fla"] = getattr(fla, "__version__", "?")
    except Exception:
        report["env"]["fla"] = None
    print("[gpu_check] env:", report["env"], flush=True)
    if not torch.cuda.is_available() and not SELFTEST:
        report["errors"].append("no CUDA device")
        save()
        print("[gpu_check] no CUDA device: nothing to check")
        return 1

    # 1. build
    try:
        _, _, cb, torch_ns = import_package()
        report["env"]["torch_backend"] = torch_ns is not None
        report["build"]["cuda_home"] = cb.find_cuda_home()
        t0 = time.time()
        mod = cb.load(verbose=False)
        report["build"].update(ok=True, seconds=round(time.time() - t0, 1),
                               module=getattr(mod, "__file__", None))
        print(f"[gpu_check] extension ready in {time.time() - t0:.1f} s: {getattr(mod, '__file__', '')}",
              flush=True)
    except Exception as e:
        report["build"].update(ok=False, error=f"{type(e).__name__}: {str(e)[:3000]}")
        report["errors"].append("build failed")
        save()
        print("[gpu_check] BUILD FAILED:", e, flush=True)
        return 1
    save()

    # 2./3. sections, each in its own process
    # The self-tests time nothing (CUDA events need a GPU): no timing section, even when asked for.
    sections = SECTIONS if not SELFTEST else [s for s in SECTIONS if not s[0].startswith("bench")]
    if args.only:
        keep = set(args.only.split(","))
        sections = [(s, w) for s, w in sections if s in keep]
    tmp = tempfile.mkdtemp(prefix="gpu_check_")
    if os.path.isdir(PEERS_DIR):
        os.environ.setdefault("TRITON_CACHE_DIR", TRITON_CACHE)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    for i, (section, weight) in enumerate(sections):
        left = TOTAL_BUDGET_S - (time.time() - start)
        if left < 10:
            report["errors"].append(f"{section}: not run (time budget)")
            continue
        rest_w = sum(w for _, w in sections[i:])
        budget = left * weight / rest_w
        results_path = os.path.join(tmp, section + ".jsonl")
        print(f"[gpu_check] {section} (budget {budget:.0f} s)", flush=True)
        cmd = [sys.executable, os.path.abspath(__file__), "--section", section, "--results",
               results_path, "--deadline", str(time.time() + budget - 8)]
        try:
            # never past the total budget (the watchdog's margin is for the summary)
            proc = subprocess.run(cmd, env=env, timeout=min(budget + 5, TOTAL_BUDGET_S + 5 - (time.time() - start)))
            if proc.returncode != 0:
                report["errors"].append(f"{section}: exit code {proc.returncode}")
        except subprocess.TimeoutExpired:
            report["errors"].append(f"{section}: killed after {budget + 5:.0f} s")
        if os.path.exists(results_path):
            with open(results_path) as f:
                report["results"] += [json.loads(line) for line in f if line.strip()]
        save()

    export_autotune(out_dir)

    n_pass, n_fail = summarize(report, args.compare)
    report["summary"] = {"pass": n_pass, "fail": n_fail, "seconds": round(time.time() - start, 1)}
    save()
    print(f"\n[gpu_check] done in {time.time() - start:.0f} s; JSON: {out_json}")
    return 0 if n_fail == 0 and not report["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
