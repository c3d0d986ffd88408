"""White-box tests (internal code paths) of src/rwkv_hf/ops/torch_wkv4.py against token-loop oracles (float64).

"""
import itertools

import pytest
import torch

from rwkv_hf.ops import reference
from rwkv_hf.ops import torch_wkv4 as M

EMPTY = -1e38


# ----------------------------------------------------------------------------- oracles

# The oracles are the reference backend's token loops (float64 in these tests).
oracle_wkv4, oracle_bi_wkv4 = reference.wkv4, reference.bi_wkv4


def direct_bi(k, v, w, u):
    """The documented double sum (no state), for small T."""
    B, T, C = k.shape
    t = torch.arange(T, dtype=k.dtype)
    dist = (t[:, None] - t[None, :]).abs()
    expo = torch.where(dist == 0, u[:, None, None], (dist - 1)[None] * w[:, None, None])  # [C, T, T]
    logits = expo[None] + k.transpose(1, 2)[:, :, None, :]  # [B, C, t, i]
    wts = torch.softmax(logits, -1)
    return torch.einsum("bcti,bic->btc", wts, v)


ORACLE = {"wkv4": oracle_wkv4, "bi_wkv4": oracle_bi_wkv4}
FAST = {"wkv4": M.wkv4, "bi_wkv4": M.bi_wkv4}


# ----------------------------------------------------------------------------- inputs

def make(op, B, T, C, *, seed=0, state=False, extreme=False, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    if extreme:
        k = (torch.rand(B, T, C, generator=g, dtype=torch.float64) * 2 - 1) * 50
        k[:, ::3] = 50 * torch.sign(k[:, ::3])
        if op == "wkv4":
            w = -torch.exp(torch.rand(C, generator=g, dtype=torch.float64) * 10 - 5)  # down to -exp(5)
            w[0] = -150.0
        else:
            w = (torch.rand(C, generator=g, dtype=torch.float64) * 2 - 1) * 150 / max(T, 1)
        u = r(C) * 3
    else:
        k = r(B, T, C) * 3
        if op == "wkv4":
            w = -torch.exp(r(C) * 2)
            u = r(C)
        else:
            w = -(torch.rand(C, generator=g, dtype=torch.float64) * 8 - 5) / max(T, 1)
            u = (r(C) * 0.5 - 1.2) / max(T, 1)
    v = r(B, T, C)
    one = lambda: torch.stack([r(B, C), torch.rand(B, C, generator=g, dtype=torch.float64) + 0.1,  # noqa: E731
                               r(B, C) * (20 if extreme else 2)], 1)
    if state:
        st = one() if op == "wkv4" else torch.stack([one(), one()], 1)
        st.select(-2, 0).mul_(st.select(-2, 1))  # num = ratio * den
    else:
        shape = (B, 3, C) if op == "wkv4" else (B, 2, 3, C)
        st = torch.zeros(shape, dtype=torch.float64)
        st.select(-2, 2).fill_(EMPTY)
    return [x.to(dtype) for x in (k, v, w, u, st)]


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def canon(s, ref):
    """(num, den) rescaled to the reference logscale: compares what the states represent."""
    scale = torch.exp(s.select(-2, 2).double() - ref.select(-2, 2).double())
    return torch.stack([s.select(-2, 0).double() * scale, s.select(-2, 1).double() * scale], -2)


def state_err(s, ref):
    return rel(canon(s, ref), canon(ref, ref))


# ----------------------------------------------------------------------------- accuracy

TS = [1, 2, 5, 16, 17, 63, 64, 100, 257]


@pytest.fixture
def chunked_only(monkeypatch):
    monkeypatch.setattr(M, "SHORT", 0)  # short sequences too go through the chunked sweep


@pytest.mark.parametrize("extreme", [False, True], ids=["realistic", "extreme"])
@pytest.mark.parametrize("op", ["wkv4", "bi_wkv4"])
@pytest.mark.parametrize("T", TS)
def test_matches_oracle(T, op, extreme, chunked_only):
    worst = {}
    for B, C, st in itertools.product([1, 2], [8, 64, 768], [False, True]):
        if C == 768 and B == 2 and T > 64:
            continue  # keep the oracle affordable
        x = make(op, B, T, C, seed=T * 31 + B * 7 + C + st, state=st, extreme=extreme)
        y_ref, s_ref = ORACLE[op](*x)
        y, s = FAST[op](*x)
        assert y.dtype == torch.float64 and s.dtype == torch.float64 and s.shape == s_ref.shape
        e64 = (rel(y, y_ref), state_err(s, s_ref), (s.select(-2, 2) - s_ref.select(-2, 2)).abs().max().item())
        x32 = [t.float() for t in x]
        y_ref32, s_ref32 = ORACLE[op](*[t.double() for t in x32])
        y32, s32 = FAST[op](*x32)
        assert y32.dtype == torch.float32 and s32.dtype == torch.float32
        assert torch.isfinite(y32).all() and torch.isfinite(s32).all()
        e32 = (rel(y32, y_ref32), state_err(s32, s_ref32))
        for name, val in zip(["y64", "s64", "ls64", "y32", "s32"], e64 + e32):
            worst[name] = max(worst.get(name, 0.0), val)
    print(op, T, "extreme" if extreme else "realistic", {n: f"{v:.1e}" for n, v in worst.items()})
    assert worst["y64"] <= 1e-10 and worst["s64"] <= 1e-10
    assert worst["ls64"] <= 1e-9 * 1e3  # logscale equals the loop's (absolute, up to its rounding)
    assert worst["y32"] <= 1e-5 and worst["s32"] <= 1e-5


def test_bi_matches_documented_double_sum(chunked_only):
    x = make("bi_wkv4", 2, 23, 6, seed=5)
    y, _ = M.bi_wkv4(*x)
    assert rel(y, direct_bi(*x[:4])) <= 1e-12


# ----------------------------------------------------------------------------- state carrying

@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("op", ["wkv4", "bi_wkv4"])
def test_split_equals_one_call(op, extreme, chunked_only):
    T, cut = 101, 37
    k, v, w, u, st = make(op, 2, T, 16, seed=3, state=True, extreme=extreme)
    y_full, s_full = FAST[op](k, v, w, u, st)
    a, b = (k[:, :cut], v[:, :cut]), (k[:, cut:], v[:, cut:])
    if op == "wkv4":
        y_a, s_a = M.wkv4(*a, w, u, st)
        y_b, s_b = M.wkv4(*b, w, u, s_a)
        y, s = torch.cat([y_a, y_b], 1), s_b
    else:
        left, right = st[:, 0], st[:, 1]
        _, s_a0 = M.bi_wkv4(*a, w, u, torch.stack([left, right], 1))
        y_b, s_b = M.bi_wkv4(*b, w, u, torch.stack([s_a0[:, 0], right], 1))
        y_a, s_a = M.bi_wkv4(*a, w, u, torch.stack([left, s_b[:, 1]], 1))
        y, s = torch.cat([y_a, y_b], 1), torch.stack([s_b[:, 0], s_a[:, 1]], 1)
    assert rel(y, y_full) <= 1e-10
    assert state_err(s, s_full) <= 1e-10


@pytest.mark.parametrize("short", [0, 16])
def test_token_by_token_equals_one_call(short, monkeypatch):
    monkeypatch.setattr(M, "SHORT", short)  # both the chunked sweep and the short-sequence loop
    k, v, w, u, st = make("wkv4", 2, 9, 8, seed=4, state=True)
    y_full, s_full = M.wkv4(k, v, w, u, st)
    ys = []
    for t in range(9):
        y, st = M.wkv4(k[:, t:t + 1], v[:, t:t + 1], w, u, st)
        ys.append(y)
    assert rel(torch.cat(ys, 1), y_full) <= 1e-10 and state_err(st, s_full) <= 1e-10


# ----------------------------------------------------------------------------- paths

@pytest.mark.parametrize("op", ["wkv4", "bi_wkv4"])
def test_loop_fallback_for_huge_ranges(op):
    k, v, w, u, st = make(op, 2, 40, 8, seed=9, state=True)
    k = k * 300  # spread of ~4000 e-folds: more than float64 can hold around one reference
    y_ref, s_ref = ORACLE[op](k, v, w, u, st)
    y, s = FAST[op](k, v, w, u, st)
    assert rel(y, y_ref) <= 1e-10 and state_err(s, s_ref) <= 1e-10


@pytest.mark.parametrize("op", ["wkv4", "bi_wkv4"])
def test_small_chunks_and_blocks(op, monkeypatch, chunked_only):
    monkeypatch.setattr(M, "CHUNK", 4)
    monkeypatch.setattr(M, "BLOCK", 8)
    for T in (1, 3, 4, 7, 33, 130):
        x = make(op, 2, T, 8, seed=T, state=True)
        y_ref, s_ref = ORACLE[op](*x)
        y, s = FAST[op](*x)
        assert rel(y, y_ref) <= 1e-10 and state_err(s, s_ref) <= 1e-10, T


@pytest.mark.parametrize("op", ["wkv4", "bi_wkv4"])
def test_realistic_float32_stays_on_the_float32_path(op):
    """The fast float32 path must not silently fall back to float64 on ordinary inputs."""
    k, v, w, u, st = make(op, 1, 4096, 64, seed=1, state=True, dtype=torch.float32)
    sl, sr = (st, None) if op == "wkv4" else (st[:, 0], st[:, 1])
    assert M._core(k, v, w, u, sl, sr, M.RANGES[torch.float32]) is not None


@pytest.mark.parametrize("op", ["wkv4", "bi_wkv4"])
def test_dominant_and_tiny_states(op, chunked_only):
    """States far above / below the tokens' magnitude (logscale +-40 around k)."""
    for shift in (40.0, -40.0):
        x = make(op, 2, 50, 8, seed=21, state=True)
        x[4].select(-2, 2).add_(shift)
        y_ref, s_ref = ORACLE[op](*x)
        y, s = FAST[op](*x)
        assert rel(y, y_ref) <= 1e-10 and state_err(s, s_ref) <= 1e-10
        y32, s32 = FAST[op](*[t.float() for t in x])
        y_ref32, s_ref32 = ORACLE[op](*[t.float().double() for t in x])
        assert rel(y32, y_ref32) <= 1e-5 and state_err(s32, s_ref32) <= 1e-5


def test_noncontiguous_inputs(chunked_only):
    k, v, w, u, st = make("bi_wkv4", 2, 50, 12, seed=2, state=True)
    kt = k.transpose(0, 1).contiguous().transpose(0, 1)
    vt = torch.stack([v, torch.zeros_like(v)], -1)[..., 0]  # channel stride 2
    y_ref, s_ref = oracle_bi_wkv4(k, v, w, u, st)
    y, s = M.bi_wkv4(kt, vt, w, u, st)
    assert rel(y, y_ref) <= 1e-10 and state_err(s, s_ref) <= 1e-10


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("state", [True, False])
@pytest.mark.parametrize("op", ["wkv4", "bi_wkv4"])
def test_gradcheck(op, state, monkeypatch, chunked_only):
    monkeypatch.setattr(M, "CHUNK", 2)  # T=7 -> several chunks in several blocks
    monkeypatch.setattr(M, "BLOCK", 4)
    x = make(op, 2, 7, 4, seed=13, state=state)
    if op == "bi_wkv4":
        x[2] = x[2] * 7  # decays of either sign, far from 0
    leaves = [t.clone().requires_grad_(True) for t in x]
    if not state:
        leaves[4].requires_grad_(False)  # -1e38 cannot be perturbed by finite differences
    assert torch.autograd.gradcheck(FAST[op], leaves, eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("op", ["wkv4", "bi_wkv4"])
def test_gradients_match_oracle(op):
    x = make(op, 2, 70, 8, seed=17, state=True)
    grads = []
    for f in (ORACLE[op], FAST[op]):
        leaves = [t.clone().requires_grad_(True) for t in x]
        y, s = f(*leaves)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
        gs = torch.randn(s.shape, generator=torch.Generator().manual_seed(2), dtype=s.dtype)
        ((y * gy).sum() + (s * gs).sum()).backward()
        grads.append([t.grad for t in leaves])
    for name, a, b in zip("kvwus", grads[1], grads[0]):
        assert rel(a, b) <= 1e-9, name


@pytest.mark.parametrize("op", ["wkv4", "bi_wkv4"])
def test_empty_state_gives_finite_gradients(op, chunked_only):
    for dtype in (torch.float32, torch.float64):
        x = make(op, 1, 50, 4, seed=1, dtype=dtype)
        leaves = [t.clone().requires_grad_(True) for t in x]
        y, s = FAST[op](*leaves)
        (y.sum() + s[..., :2, :].sum()).backward()
        assert all(torch.isfinite(t.grad).all() for t in leaves)
