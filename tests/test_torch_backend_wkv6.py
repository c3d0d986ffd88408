"""White-box tests (internal code paths) of the chunked RWKV-6 WKV (src/rwkv_hf/ops/torch_wkv6.py) against a token loop.

"""
import pytest
import torch

from rwkv_hf.ops import torch_wkv6 as mod  # noqa: E402


def loop(r, k, v, w, u, state):
    S = state.clone()
    ys = []
    for t in range(r.shape[1]):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]
        ys.append(torch.einsum("bhk,bhkv->bhv", r[:, t], S + u[None, :, :, None] * kv))
        S = torch.exp(w[:, t])[..., None] * S + kv
    return torch.stack(ys, 1), S


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def inputs(B, T, H, K, V, *, seed=0, strong=False, state=True, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    r, k, v = rn(B, T, H, K) * 0.5, rn(B, T, H, K) * 0.5, rn(B, T, H, V)
    w = -torch.exp(rn(B, T, H, K) * 0.5 - 1)
    if strong:  # strong decays mixed in per token and channel, plus exact zeros
        pick = torch.rand(B, T, H, K, generator=g, dtype=torch.float64)
        w = torch.where(pick < 0.25, -torch.exp(rn(B, T, H, K) * 2 + 2), w)
        w = torch.where(pick > 0.95, torch.zeros_like(w), w)
    u = rn(H, K) * 0.5
    s = rn(B, H, K, V) * 0.5 if state else torch.zeros(B, H, K, V, dtype=torch.float64)
    return [x.to(dtype) for x in (r, k, v, w, u, s)]


CASES = [(B, T, K, V) for T in (1, 5, 16, 17, 63, 64, 100, 257)
         for (B, K, V) in ((1, 8, 8), (2, 16, 8), (2, 8, 16), (1, 64, 64))]


@pytest.mark.parametrize("strong", [False, True])
@pytest.mark.parametrize("B,T,K,V", CASES)
def test_matches_loop(B, T, K, V, strong):
    H = 2
    for seed, with_state in ((0, True), (1, False)):
        x64 = inputs(B, T, H, K, V, seed=seed + T, strong=strong, state=with_state)
        y_ref, s_ref = loop(*x64)
        y, s = mod.wkv6(*x64)
        assert y.dtype == s.dtype == torch.float64
        assert y.shape == (B, T, H, V) and s.shape == (B, H, K, V)
        assert rel(y, y_ref) < 1e-10 and rel(s, s_ref) < 1e-10, (rel(y, y_ref), rel(s, s_ref))
        y, s = mod.wkv6(*[t.float() for t in x64])
        assert y.dtype == s.dtype == torch.float32
        assert rel(y, y_ref) < 1e-5 and rel(s, s_ref) < 1e-5, (rel(y, y_ref), rel(s, s_ref))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("max_range", [0.5, 3.0, 10.0])
def test_hierarchical_path(dtype, tol, max_range):
    # A small per-reference range forces several halving levels on ordinary decays.
    x = inputs(2, 100, 2, 16, 8, seed=3)
    y_ref, s_ref = loop(*x)
    y, s = mod._wkv6(*[t.to(dtype) for t in x], max_range=max_range)
    assert rel(y, y_ref) < tol and rel(s, s_ref) < tol


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_adversarial_decays(dtype, tol):
    # One huge decay early in each chunk, then tiny decays: pairs after it have factors ~1.
    B, T, H, K, V = 1, 130, 2, 8, 8
    r, k, v, w, u, s = inputs(B, T, H, K, V, seed=5)
    w = torch.full_like(w, -0.003)
    w[:, 3::64] = -1e4
    w[:, 40::64, 0] = -30.0
    w[:, 41::64, 1] = 0.0
    x = [r, k, v, w, u, s]
    y_ref, s_ref = loop(*x)
    y, st = mod.wkv6(*[t.to(dtype) for t in x])
    assert rel(y, y_ref) < tol and rel(st, s_ref) < tol


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_channel_split(dtype, tol):
    # A few channels with strong decays (trained-model-like) among ordinary ones: they are run
    # separately on the general path; the others stay on the fast path.
    B, T, H, K, V = 2, 150, 3, 16, 8
    r, k, v, w, u, s = inputs(B, T, H, K, V, seed=29)
    w[:, :, 0, :3] = -12.0
    w[:, :, 2, 5] = -40.0
    w[:, 60:70, 1, 7] = -300.0
    x = [r, k, v, w, u, s]
    y_ref, s_ref = loop(*x)
    y, st = mod.wkv6(*[t.to(dtype) for t in x])
    assert rel(y, y_ref) < tol and rel(st, s_ref) < tol
    # RWKV-5 style: per-channel constant decay, some channels strong
    g = torch.Generator().manual_seed(3)
    w5 = -torch.exp(torch.randn(H, K, dtype=torch.float64, generator=g) * 1.5)
    w5[0, 0] = -700.0
    x = [r, k, v, w5.expand(B, T, H, K), u, s]
    y_ref, s_ref = loop(*x)
    y, st = mod.wkv6(*[t.to(dtype) for t in x])
    assert rel(y, y_ref) < tol and rel(st, s_ref) < tol


def test_gradcheck_channel_split():
    x = inputs(2, 9, 2, 4, 4, seed=31)
    x[3][:, :, 0, 1] = -3.0
    x[3][:, :, 1, 2] = -5.0
    x = [t.clone().requires_grad_(True) for t in x]
    f = lambda *a: mod._wkv6(*a, chunk_size=4, max_range=6.0, seg_chunks=1)  # noqa: E731
    assert torch.autograd.gradcheck(f, x, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_expanded_w_rwkv5():
    B, T, H, K = 2, 70, 3, 16
    r, k, v, _, u, s = inputs(B, T, H, K, K, seed=7)
    w = -torch.exp(torch.randn(H, K, dtype=torch.float64) - 1)
    w = w.expand(B, T, H, K)
    y_ref, s_ref = loop(r, k, v, w, u, s)
    y, st = mod.wkv6(r, k, v, w, u, s)
    assert rel(y, y_ref) < 1e-10 and rel(st, s_ref) < 1e-10
    # non-contiguous r (a transposed buffer)
    rt = r.transpose(0, 1).contiguous().transpose(0, 1)
    y2, _ = mod.wkv6(rt, k, v, w, u, s)
    assert rel(y2, y_ref) < 1e-10


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("strong", [False, True])
def test_split_sequence(dtype, strong):
    x = [t.to(dtype) for t in inputs(2, 150, 2, 16, 16, seed=11, strong=strong)]
    r, k, v, w, u, s = x
    y, s_full = mod.wkv6(*x)
    cut = 77
    y1, s1 = mod.wkv6(r[:, :cut], k[:, :cut], v[:, :cut], w[:, :cut], u, s)
    y2, s2 = mod.wkv6(r[:, cut:], k[:, cut:], v[:, cut:], w[:, cut:], u, s1)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert rel(torch.cat([y1, y2], 1), y) < tol and rel(s2, s_full) < tol


@pytest.mark.parametrize("max_range", [None, 0.3])
@pytest.mark.parametrize("strong", [False, True])
def test_gradcheck(strong, max_range):
    x = inputs(2, 7, 2, 4, 4, seed=13, strong=strong)
    x = [t.clone().requires_grad_(True) for t in x]
    f = lambda *a: mod._wkv6(*a, chunk_size=2, max_range=max_range)  # noqa: E731
    assert torch.autograd.gradcheck(f, x, eps=1e-6, atol=1e-6, rtol=1e-5)
    f4 = lambda *a: mod._wkv6(*a, chunk_size=4, max_range=max_range)  # noqa: E731
    assert torch.autograd.gradcheck(f4, x, eps=1e-6, atol=1e-6, rtol=1e-5)
    fs = lambda *a: mod._wkv6(*a, chunk_size=2, max_range=max_range, seg_chunks=1)  # noqa: E731
    assert torch.autograd.gradcheck(fs, x, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_no_state_grad_paths():
    # Only y used (final-state grad is None), and only the state used (y grad is None).
    x = [t.clone().requires_grad_(True) for t in inputs(1, 9, 2, 4, 4, seed=19)]
    fy = lambda *a: mod._wkv6(*a, chunk_size=4, seg_chunks=2)[0]  # noqa: E731
    fs = lambda *a: mod._wkv6(*a, chunk_size=4, seg_chunks=2)[1]  # noqa: E731
    assert torch.autograd.gradcheck(fy, x, eps=1e-6, atol=1e-6, rtol=1e-5)
    assert torch.autograd.gradcheck(fs, x, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("seg_chunks", [1, 3])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_segments(seg_chunks, dtype, tol):
    x = inputs(2, 300, 3, 16, 8, seed=23)
    y_ref, s_ref = loop(*x)
    y, s = mod._wkv6(*[t.to(dtype) for t in x], seg_chunks=seg_chunks)
    assert rel(y, y_ref) < tol and rel(s, s_ref) < tol


@pytest.mark.parametrize("strong", [False, True])
def test_grads_match_loop_fp32(strong):
    x = inputs(2, 150, 2, 16, 16, seed=17, strong=strong)
    xs = [t.float().requires_grad_(True) for t in x]
    xr = [t.clone().requires_grad_(True) for t in x]
    y, s = mod._wkv6(*xs, seg_chunks=1)
    yr, sr = loop(*xr)
    gy = torch.randn_like(yr)
    gs = torch.randn_like(sr)
    ((y.double() * gy).sum() + (s.double() * gs).sum()).backward()
    ((yr * gy).sum() + (sr * gs).sum()).backward()
    for a, b in zip(xs, xr):
        assert rel(a.grad, b.grad) < 1e-4, rel(a.grad, b.grad)


def test_long_bf16_inputs_finite():
    B, T, H, K = 1, 16384, 2, 64
    g = torch.Generator().manual_seed(0)
    rn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    r, k = (rn(B, T, H, K) * 0.5).bfloat16(), (rn(B, T, H, K) * 0.5).bfloat16()
    v = rn(B, T, H, K).bfloat16()
    w = (-torch.exp(rn(B, T, H, K) * 0.5 - 1)).bfloat16()
    u = (rn(H, K) * 0.5).bfloat16()
    x = [t.float() for t in (r, k, v, w, u)] + [torch.zeros(B, H, K, K)]
    y, s = mod.wkv6(*x)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    # state carried over the second half matches
    h = T // 2
    _, s1 = mod.wkv6(*[t[:, :h] for t in x[:4]], x[4], x[5])
    y2, s2 = mod.wkv6(*[t[:, h:] for t in x[:4]], x[4], s1)
    assert rel(y2, y[:, h:]) < 1e-5 and rel(s2, s) < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_cuda_matches_loop(dtype, tol):
    cases = [inputs(2, 257, 3, 16, 8, seed=41), inputs(1, 200, 2, 64, 64, seed=43, strong=True)]
    x = inputs(2, 150, 3, 16, 8, seed=47)
    x[3][:, :, 0, :3] = -12.0  # channel split
    cases.append(x)
    for x in cases:
        y_ref, s_ref = loop(*x)
        y, s = mod.wkv6(*[t.to("cuda", dtype) for t in x])
        assert y.is_cuda and s.is_cuda
        assert rel(y.cpu(), y_ref) < tol and rel(s.cpu(), s_ref) < tol


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("max_range", [None, 0.3, 6.0])
def test_cuda_gradcheck(max_range):
    x = inputs(2, 9, 2, 4, 4, seed=31)
    x[3][:, :, 0, 1] = -3.0
    x = [t.cuda().requires_grad_(True) for t in x]
    f = lambda *a: mod._wkv6(*a, chunk_size=4, max_range=max_range, seg_chunks=1)  # noqa: E731
    assert torch.autograd.gradcheck(f, x, eps=1e-6, atol=1e-6, rtol=1e-5)
