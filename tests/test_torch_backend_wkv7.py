"""White-box tests (internal code paths) of the chunked RWKV-7 WKV op (src/rwkv_hf/ops/torch_wkv7.py).
"""
import pytest
import torch

from rwkv_hf.ops import torch_wkv7 as tw  # noqa: E402


def oracle(r, k, v, w, a, b, state):
    """The token loop that defines the op."""
    S = state.clone()
    ys = []
    for t in range(r.shape[1]):
        sa = torch.einsum("bhk,bhkv->bhv", a[:, t], S)
        S = (torch.exp(w[:, t])[..., None] * S + b[:, t, :, :, None] * sa[:, :, None, :]
             + k[:, t, :, :, None] * v[:, t, :, None, :])
        ys.append(torch.einsum("bhk,bhkv->bhv", r[:, t], S))
    return torch.stack(ys, 1), S


def make_inputs(B, T, H, K, V, seed=0, state=True, strong=0.0, dtype=torch.float64):
    """RWKV-7-realistic inputs; `strong` = fraction of (token, channel) log-decays set to -30."""
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    r, k, v = rn(B, T, H, K), rn(B, T, H, K), rn(B, T, H, V)
    w = -0.6065306597126334 * torch.sigmoid(rn(B, T, H, K))
    if strong:
        w = torch.where(torch.rand(B, T, H, K, generator=g, dtype=torch.float64) < strong, torch.full_like(w, -30.0), w)
    kk = torch.nn.functional.normalize(rn(B, T, H, K), dim=-1)
    a, b = -kk, kk * torch.sigmoid(rn(B, T, H, K))
    s = rn(B, H, K, V) if state else torch.zeros(B, H, K, V, dtype=torch.float64)
    return [x.to(dtype) for x in (r, k, v, w, a, b, s)]


def rel(x, ref):
    return ((x.double() - ref).abs().max() / ref.abs().max()).item()


CASES = [(T, B, KV) for T in (1, 5, 16, 17, 63, 64, 100, 257) for B in (1, 2) for KV in ((64, 64), (8, 16))]


@pytest.mark.parametrize("T,B,KV", CASES)
@pytest.mark.parametrize("state", [False, True])
def test_matches_token_loop(T, B, KV, state):
    K, V = KV
    xs = make_inputs(B, T, 2, K, V, seed=T * 7 + B, state=state)
    y_ref, s_ref = oracle(*xs)
    y, s = tw.wkv7(*xs)
    assert y.dtype == torch.float64 and y.shape == (B, T, 2, V) and s.shape == (B, 2, K, V)
    assert rel(y, y_ref) <= 1e-10 and rel(s, s_ref) <= 1e-10
    y32, s32 = tw.wkv7(*[x.float() for x in xs])
    assert y32.dtype == torch.float32
    assert rel(y32, y_ref) <= 1e-5 and rel(s32, s_ref) <= 1e-5


@pytest.mark.parametrize("strong", [0.02, 0.2, 1.0])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_strong_decays(strong, dtype, tol):
    xs = make_inputs(2, 100, 2, 16, 8, seed=3, strong=strong)
    y_ref, s_ref = oracle(*xs)
    y, s = tw.wkv7(*[x.to(dtype) for x in xs])
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    assert rel(y, y_ref) <= tol and rel(s, s_ref) <= tol


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_extreme_decays(dtype):
    xs = make_inputs(1, 40, 2, 8, 8, seed=4)
    w = xs[3].clone()
    w[:, ::3] = -1e4          # far beyond any chunk's budget: decay is exactly 0
    w[:, 1::7] = -200.0
    xs[3] = w
    y_ref, s_ref = oracle(*xs)
    y, s = tw.wkv7(*[x.to(dtype) for x in xs])
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert rel(y, y_ref) <= tol and rel(s, s_ref) <= tol


@pytest.mark.parametrize("chunk", [1, 2, 4, 8, 16, 32, 64])
def test_chunk_sizes(chunk):
    xs = make_inputs(2, 50, 2, 8, 4, seed=5)
    y_ref, s_ref = oracle(*xs)
    y, s = tw.wkv7_chunked(*xs, chunk_size=chunk)
    assert rel(y, y_ref) <= 1e-10 and rel(s, s_ref) <= 1e-10


@pytest.mark.parametrize("seg", [1, 5, 8, 20, 64])
def test_segments(seg):
    xs = make_inputs(2, 50, 2, 8, 4, seed=11)
    y_ref, s_ref = oracle(*xs)
    y, s = tw.wkv7_chunked(*xs, chunk_size=8, segment_len=seg)
    assert rel(y, y_ref) <= 1e-10 and rel(s, s_ref) <= 1e-10
    z = [x.detach().requires_grad_(True) for x in xs]  # autograd path (concatenation)
    y2, s2 = tw.wkv7_chunked(*z, chunk_size=8, segment_len=seg)
    assert rel(y2.detach(), y_ref) <= 1e-10 and rel(s2.detach(), s_ref) <= 1e-10


def test_split_sequence_carries_state():
    xs = make_inputs(2, 130, 2, 16, 16, seed=6)
    y, s = tw.wkv7(*xs)
    cut = 77
    y1, s1 = tw.wkv7(*[x[:, :cut] for x in xs[:6]], xs[6])
    y2, s2 = tw.wkv7(*[x[:, cut:] for x in xs[:6]], s1)
    assert rel(torch.cat([y1, y2], 1), y) <= 1e-12 and rel(s2, s) <= 1e-12


def test_non_contiguous_inputs():
    xs = make_inputs(2, 33, 3, 8, 8, seed=7)
    y_ref, s_ref = oracle(*xs)
    nc = [x.transpose(0, 1).contiguous().transpose(0, 1) for x in xs[:6]]  # same values, odd strides
    st = xs[6].transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not nc[0].is_contiguous() and not st.is_contiguous()
    y, s = tw.wkv7(*nc, st)
    assert rel(y, y_ref) <= 1e-10 and rel(s, s_ref) <= 1e-10


def test_gradcheck():
    xs = make_inputs(2, 7, 2, 4, 4, seed=8)
    xs = [x.detach().requires_grad_(True) for x in xs]
    fn = lambda *z: tw.wkv7_chunked(*z, chunk_size=2)  # several chunks + padding
    assert torch.autograd.gradcheck(fn, xs, eps=1e-6, atol=1e-6, rtol=1e-5)
    fn = lambda *z: tw.wkv7_chunked(*z, chunk_size=2, segment_len=3)  # several segments too
    assert torch.autograd.gradcheck(fn, xs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_grads_match_token_loop():
    xs = make_inputs(1, 45, 2, 8, 8, seed=9)
    gy = torch.randn(1, 45, 2, 8, dtype=torch.float64)
    gs = torch.randn(1, 2, 8, 8, dtype=torch.float64)

    def grads(fn):
        z = [x.detach().requires_grad_(True) for x in xs]
        y, s = fn(*z)
        return torch.autograd.grad((y * gy).sum() + (s * gs).sum(), z)

    for g1, g2 in zip(grads(tw.wkv7), grads(oracle)):
        assert rel(g1, g2) <= 1e-10
    for g1, g2 in zip(grads(lambda *z: tw.wkv7_chunked(*z, chunk_size=4, segment_len=10)), grads(oracle)):
        assert rel(g1, g2) <= 1e-10


def test_long_fp32_finite():
    xs = make_inputs(1, 16384, 2, 64, 64, seed=10, dtype=torch.float32)
    y, s = tw.wkv7(*xs)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()


# ---------------------------------------------------------------------------
# Benchmark (not a test):  python tests/test_torch_wkv7_dev.py [bench|mem|cuda]
# ---------------------------------------------------------------------------
def _bench_main(argv):
    import os
    import subprocess
    import sys
    import time

    threads = int(os.environ.get("THREADS", 2))
    torch.set_num_threads(threads)
    what = argv[1] if len(argv) > 1 else "bench"
    T = int(os.environ.get("T", 4096))

    def timeit(f, n=3):
        f()  # warm-up
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return sorted(ts)[n // 2]

    def fwd_bwd(fn, xs):
        z = [x.detach().requires_grad_(True) for x in xs]
        y, s = fn(*z)
        (y.sum() + s.sum()).backward()

    if what == "mem":  # peak RSS of one forward+backward (run in a fresh process)
        g = torch.Generator().manual_seed(0)
        rn = lambda: torch.randn(1, T, 12, 64, generator=g)
        r, k, v = rn(), rn(), rn()
        w = -0.6065306597126334 * torch.sigmoid(rn())
        kk = torch.nn.functional.normalize(rn(), dim=-1)
        a, b = -kk, kk * torch.sigmoid(rn())
        xs = [r, k, v, w, a, b, torch.zeros(1, 12, 64, 64)]
        del kk

        def vm(key):  # kB, from /proc (ru_maxrss can carry the parent's peak across exec)
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith(key))

        base = vm("VmRSS:")
        t0 = time.perf_counter()
        z = [x.detach().requires_grad_(True) for x in xs]
        y, s = tw.wkv7(*z)
        (y.sum() + s.sum()).backward()
        dt = time.perf_counter() - t0
        ok = bool(torch.isfinite(y).all()) and all(bool(torch.isfinite(x.grad).all()) for x in z)
        peak = vm("VmHWM:")
        print(f"T={T} fwd+bwd {dt:.2f}s finite={ok} peak RSS {peak / 1024:.0f} MB "
              f"(+{(peak - base) / 1024:.0f} MB over torch + inputs)")
        return

    if what == "cuda":
        dev = "cuda"
        for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
            for T_, B in ((1, 1), (17, 2), (257, 2)):
                xs = make_inputs(B, T_, 4, 64, 64, seed=T_)
                y_ref, s_ref = oracle(*xs)
                y, s = tw.wkv7(*[x.to(dev, dtype) for x in xs])
                e = max(rel(y.cpu(), y_ref), rel(s.cpu(), s_ref))
                print(f"cuda {dtype} T={T_} B={B}: max rel err {e:.2e} {'OK' if e <= tol else 'FAIL'}")
        xs = [x.to(dev).requires_grad_(True) for x in make_inputs(2, 7, 2, 4, 4, seed=8)]
        ok = torch.autograd.gradcheck(lambda *z: tw.wkv7_chunked(*z, chunk_size=2), xs, eps=1e-6, atol=1e-6, rtol=1e-5)
        print("cuda gradcheck", ok)
        xs = make_inputs(1, 4096, 12, 64, 64, dtype=torch.float32)
        xs = [x.to(dev) for x in xs]

        def sync_fwd():
            with torch.no_grad():
                tw.wkv7(*xs)
            torch.cuda.synchronize()

        def sync_fb():
            fwd_bwd(tw.wkv7, xs)
            torch.cuda.synchronize()

        print(f"cuda T=4096 H=12 fp32: fwd {timeit(sync_fwd) * 1e3:.1f} ms, fwd+bwd {timeit(sync_fb) * 1e3:.1f} ms")
        return

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, T={T}, B=1, H=12, K=V=64, fp32")
    xs = make_inputs(1, T, 12, 64, 64, dtype=torch.float32)
    with torch.no_grad():
        if os.environ.get("LOOP", "1") == "1":
            t_loop = timeit(lambda: oracle(*xs))
            print(f"token loop fwd       {t_loop * 1e3:9.1f} ms  {T / t_loop:9.0f} tok/s")
    if os.environ.get("LOOP", "1") == "1" and os.environ.get("LOOPBWD", "1") == "1":
        fwd_bwd(oracle, [x[:, :256] for x in xs])  # warm-up
        t0 = time.perf_counter()
        fwd_bwd(oracle, xs)  # a single run: this one takes tens of seconds
        t_loop_fb = time.perf_counter() - t0
        print(f"token loop fwd+bwd   {t_loop_fb * 1e3:9.1f} ms  {T / t_loop_fb:9.0f} tok/s  (1 run)")
    for cs in [int(c) for c in os.environ.get("CHUNKS", "32").split(",")]:
        fn = lambda *z: tw.wkv7_chunked(*z, chunk_size=cs)
        with torch.no_grad():
            t = timeit(lambda: fn(*xs))
        t2 = timeit(lambda: fwd_bwd(fn, xs))
        print(f"chunked L={cs:3d} fwd     {t * 1e3:9.1f} ms  {T / t:9.0f} tok/s")
        print(f"chunked L={cs:3d} fwd+bwd {t2 * 1e3:9.1f} ms  {T / t2:9.0f} tok/s")
    if os.environ.get("PROFILE"):
        with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            tw.wkv7(*xs)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    if os.environ.get("MEM", "1") == "1":
        env = dict(os.environ, T="16384")
        subprocess.run([sys.executable, __file__, "mem"], env=env, check=False)


if __name__ == "__main__":
    import sys

    _bench_main(sys.argv)
