"""The WKV operator layer: every backend against the float64 reference, state carrying,
gradients, long low-precision sequences, and input validation."""
import ctypes
import math
import os
import warnings

import pytest
import torch
from hypothesis import given, settings, strategies as st

from rwkv_hf import ops
from rwkv_hf.ops import cpu_backend
from rwkv_hf.ops.random_inputs import OPS, make_clouds as clouds, make_inputs, rounding_ties

PER_CHANNEL = ("wkv4", "bi_wkv4")
BIDIRECTIONAL = ("bi_wkv4", "bi_wkv6", "point_wkv")
# The fast backends of each op: chunked torch and the compiled cpu kernels (where it has one).
FAST = [(op, b) for op in OPS for b in ("torch", "cpu") if b == "torch" or op in cpu_backend.OPS]
FAST_IDS = [f"{op}-{b}" for op, b in FAST]


def run(op, inputs, **kw):
    return getattr(ops, op)(**inputs, **kw)


def rel(a, b):
    """max|a-b| / max|b| over the whole tensor."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def canon(state, like):
    """Per-channel states are (num, den, logscale); compare what they represent on a common scale."""
    if state.shape[-2] != 3 or state.dim() not in (3, 4):
        return state
    ls, ref_ls = state.select(-2, 2), like.select(-2, 2)
    scale = torch.exp(ls - ref_ls)
    return torch.stack([state.select(-2, 0) * scale, state.select(-2, 1) * scale], -2)


def state_rel(op, s, ref):
    if op in PER_CHANNEL:
        return rel(canon(s, ref), canon(ref, ref))
    return rel(s, ref)


def as64(inputs):
    return {k: v.double() for k, v in inputs.items()}


# ---------------------------------------------------------------------------- parity

SHAPES = [  # (B, T, H, N)
    (1, 1, 2, 8),
    (2, 17, 2, 8),
    (1, 64, 1, 16),
    (2, 100, 2, 16),
    (1, 129, 1, 64),
]


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}T{}H{}N{}".format(*s))
@pytest.mark.parametrize("op,backend", FAST, ids=FAST_IDS)
def test_fast_backends_match_reference(op, backend, shape, with_state):
    B, T, H, N = shape
    x64 = make_inputs(op, B, T, H, N, dtype=torch.float64, state=with_state, seed=T * 7 + B)
    y_ref, s_ref = run(op, x64, backend="reference", output_final_state=True)
    y, s = run(op, x64, backend=backend, output_final_state=True)
    assert y.dtype == torch.float64 and s.dtype == torch.float64
    assert rel(y, y_ref) <= 1e-10
    assert state_rel(op, s, s_ref) <= 1e-10
    # float32 inputs: judged against the float64 reference of the same values.
    x32 = {k: v.float() for k, v in x64.items()}
    y32, s32 = run(op, x32, backend=backend, output_final_state=True)
    assert y32.dtype == torch.float32 and s32.dtype == torch.float32
    y_ref32, s_ref32 = run(op, as64(x32), backend="reference", output_final_state=True)
    assert rel(y32, y_ref32) <= 1e-5
    assert state_rel(op, s32, s_ref32) <= 1e-5


@pytest.mark.parametrize("op,backend", FAST, ids=FAST_IDS)
def test_strong_decays_stay_exact(op, backend):
    x = make_inputs(op, 2, 45, 2, 16, dtype=torch.float64, state=True, seed=3, strong_decay=True)
    y_ref, s_ref = run(op, x, backend="reference", output_final_state=True)
    y, s = run(op, x, backend=backend, output_final_state=True)
    assert rel(y, y_ref) <= 1e-10 and state_rel(op, s, s_ref) <= 1e-10
    y32, s32 = run(op, {k: v.float() for k, v in x.items()}, backend=backend, output_final_state=True)
    assert torch.isfinite(y32).all() and torch.isfinite(s32).all()
    assert rel(y32, y_ref) <= 1e-4


@settings(max_examples=25, deadline=None)
@given(op=st.sampled_from(OPS), B=st.integers(1, 3), T=st.integers(1, 80), H=st.integers(1, 3),
       N=st.sampled_from([1, 2, 4, 8, 32, 64]), with_state=st.booleans(), seed=st.integers(0, 2**31 - 1),
       backend=st.sampled_from(["torch", "cpu"]))
def test_property_random_shapes(op, B, T, H, N, with_state, seed, backend):
    x = make_inputs(op, B, T, H, N, dtype=torch.float64, state=with_state, seed=seed)
    y_ref, s_ref = run(op, x, backend="reference", output_final_state=True)
    y, s = run(op, x, backend=backend, output_final_state=True)
    assert y.shape == y_ref.shape and s.shape == s_ref.shape
    assert rel(y, y_ref) <= 1e-10 and state_rel(op, s, s_ref) <= 1e-10


@pytest.mark.parametrize("op", ["wkv4", "bi_wkv4"])
def test_cpu_per_channel_kernels_split_channels_across_threads_with_the_same_results(op):
    """With one batch entry the cpu kernels split the channels into blocks (whole 64-byte lines:
    here 32 + 18 channels on 2 threads): y, the final state and every gradient are those of one
    thread, bit for bit, and the reference's to 1e-10."""
    x = make_inputs(op, 1, 150, 1, 50, dtype=torch.float64, state=True, seed=4)
    threads = torch.get_num_threads()
    got = {}
    try:
        for n in (1, 2, "reference"):
            torch.set_num_threads(threads if n == "reference" else n)
            leaves = {k: t.clone().requires_grad_(True) for k, t in x.items()}
            y, s = run(op, leaves, backend="reference" if n == "reference" else "cpu", output_final_state=True)
            g = torch.Generator().manual_seed(3)
            ((y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
             + (s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum()).backward()
            got[n] = [y, s] + [leaves[k].grad for k in x]
    finally:
        torch.set_num_threads(threads)
    for name, one, two, ref in zip(["y", "state", *x], got[1], got[2], got["reference"]):
        assert torch.equal(one, two), name
        if name == "state":
            assert state_rel(op, two, ref) <= 1e-10
        else:
            assert rel(two, ref) <= 1e-10, name


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_value_dim_may_differ_from_key_dim(backend):
    """Outputs, final state and every gradient. V = 64 is the cpu kernels' compiled head size
    with other K: K = 6 leaves rows outside the backward's whole groups of vector lanes."""
    for op in ("wkv5", "wkv6", "bi_wkv6", "wkv7"):
        for K, V in ((8, 5), (8, 64), (6, 64)):
            x = make_inputs(op, 2, 19, 2, K, dtype=torch.float64, state=True, seed=1)
            x["v"] = torch.randn(2, 19, 2, V, dtype=torch.float64)
            x["state"] = torch.randn(*x["state"].shape[:-1], V, dtype=torch.float64)
            got = {}
            for b in ("reference", backend):
                leaves = {n: t.clone().requires_grad_(True) for n, t in x.items()}
                y, s = run(op, leaves, backend=b, output_final_state=True)
                assert y.shape == (2, 19, 2, V)
                g = torch.Generator().manual_seed(3)
                ((y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
                 + (s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum()).backward()
                got[b] = [y, s] + [leaves[n].grad for n in x]
            for name, a, ref in zip(["y", "state", *x], got[backend], got["reference"]):
                assert rel(a, ref) <= 1e-10, (op, K, V, name)


def decay_between(w, i, t):
    """The product of the decay factors of the tokens strictly between i and t (w [T, ...])."""
    lo, hi = min(i, t), max(i, t)
    return torch.exp(w[lo + 1:hi].sum(0))  # an empty sum for neighbours: a factor of 1


def test_ops_against_independent_formulas():
    """The reference loops against the closed-form sums written in the docs (float64)."""
    B, T, H, N = 1, 9, 2, 4
    # bi_wkv4: explicit double sum.
    x = make_inputs("bi_wkv4", B, T, H, N, dtype=torch.float64, seed=5)
    k, v, w, u = x["k"][0], x["v"][0], x["w"], x["u"]
    y = torch.empty_like(k)
    for t in range(T):
        num = torch.exp(u + k[t]) * v[t]
        den = torch.exp(u + k[t])
        for i in range(T):
            if i != t:
                e = torch.exp((abs(t - i) - 1) * w + k[i])
                num, den = num + e * v[i], den + e
        y[t] = num / den
    assert rel(ops.bi_wkv4(**x, backend="reference")[0][0], y) <= 1e-12
    # bi_wkv6: explicit products of decays between tokens.
    x = make_inputs("bi_wkv6", B, T, H, N, dtype=torch.float64, seed=6)
    (r, k, v, w), u = (x[n][0] for n in "rkvw"), x["u"]
    y = torch.zeros(T, H, N, dtype=torch.float64)
    for t in range(T):
        for i in range(T):
            if i == t:
                M = u[..., None] * k[t][..., None] * v[t][:, None, :]
            else:
                M = decay_between(w, i, t)[..., None] * k[i][..., None] * v[i][:, None, :]
            y[t] += torch.einsum("hk,hkv->hv", r[t], M)
    assert rel(ops.bi_wkv6(**x, backend="reference")[0][0], y) <= 1e-12
    # point_wkv: explicit products of decays; the state is contracted with the key over V.
    x = make_inputs("point_wkv", B, T, H, N, dtype=torch.float64, seed=7)
    (r, k, v, w), u = (x[n][0] for n in "rkvw"), x["u"]
    y = torch.zeros(T, H, N, dtype=torch.float64)
    for t in range(T):
        for i in range(T):
            if i == t:
                y[t] += r[t] * u * k[t] * v[t].sum(-1, keepdim=True)
            else:
                y[t] += r[t] * decay_between(w, i, t) * k[i] * (v[i] * k[t]).sum(-1, keepdim=True)
    assert rel(ops.point_wkv(**x, backend="reference")[0][0], y) <= 1e-12


@pytest.mark.parametrize("backend", ["reference", "torch", "cpu"])
def test_point_wkv_is_pointrwkvs_averaged_one_way_loops(backend):
    """PointRWKV's WKVAttention as released (models/point_rwkv.py): a one-way loop over the
    tokens, o_t[d] = sigmoid(r_t[d]) (sum_e S[d, e] k_t[e] + u[d] k_t[d] sum_e v_t[e]), then
    S <- diag(w_t) S + k_t v_t^T with w the decay factor; run on the sequence and on its
    reverse, averaged. point_wkv gives it with r = sigmoid(r) / 2 and u = 2 u."""
    B, T, H, N = 2, 21, 2, 6
    x = make_inputs("point_wkv", B, T, H, N, dtype=torch.float64, seed=8)
    r, k, v, w, u = (x[n] for n in ("r", "k", "v", "w", "u"))

    def one_way(r, k, v, factor):
        S = torch.zeros(B, H, N, N, dtype=torch.float64)
        out = []
        for t in range(T):
            kv = torch.einsum("bhd,bhe->bhde", k[:, t], v[:, t])
            read = torch.einsum("bhde,bhe->bhd", S, k[:, t])
            bonus = torch.einsum("bhde,hd->bhd", kv, u)
            out.append(torch.sigmoid(r[:, t]) * (read + bonus))
            S = factor[:, t, ..., None] * S + kv
        return torch.stack(out, 1)

    want = (one_way(r, k, v, w.exp()) + one_way(r.flip(1), k.flip(1), v.flip(1), w.exp().flip(1)).flip(1)) / 2
    got = ops.point_wkv(torch.sigmoid(r) / 2, k, v, w, 2 * u, backend=backend)[0]
    assert rel(got, want) <= 1e-12


def test_wkv4_matches_transformers_rwkv():
    """An implementation nobody here wrote: transformers' RWKV-4 CPU recurrence."""
    from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu

    torch.manual_seed(0)
    B, T, C = 2, 23, 24
    time_decay, time_first = torch.randn(C), torch.randn(C) * 0.5
    k, v = torch.randn(B, T, C) * 2, torch.randn(B, T, C)
    y_hf, (num, den, mx) = rwkv_linear_attention_cpu(time_decay, time_first, k, v, return_state=True)
    for backend in ops.available_backends():
        y, s = ops.wkv4(k, v, -torch.exp(time_decay), time_first, output_final_state=True, backend=backend)
        assert rel(y, y_hf) <= 1e-5
        ref = torch.stack([num, den, mx], 1)
        assert rel(canon(s, ref), canon(ref, ref)) <= 1e-5


def test_wkv6_and_wkv7_match_flash_linear_attention_references():
    """flash-linear-attention's pure-torch recurrences (head-first layout, float32)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Triton is not supported on current platform"
        from fla.ops.generalized_delta_rule.dplr.naive import dplr_recurrence
        from fla.ops.rwkv6.recurrent_naive import naive_recurrent_rwkv6

    hf = lambda x: x.transpose(1, 2).contiguous()  # [B, T, H, K] <-> [B, H, T, K]
    x = make_inputs("wkv6", 2, 31, 2, 16, state=True, seed=8)
    y_fla, s_fla = naive_recurrent_rwkv6(hf(x["r"]), hf(x["k"]), hf(x["v"]), hf(x["w"]), x["u"], scale=1.0,
                                         initial_state=x["state"], output_final_state=True)
    x7 = make_inputs("wkv7", 2, 31, 2, 16, state=True, seed=9)
    # dplr_recurrence multiplies q by K**-0.5 internally; undo it.
    y7_fla, s7_fla = dplr_recurrence(hf(x7["r"]) * 16 ** 0.5, hf(x7["k"]), hf(x7["v"]), hf(x7["a"]), hf(x7["b"]),
                                     hf(x7["w"]), initial_state=x7["state"], output_final_state=True)
    for backend in ops.available_backends():
        y, s = ops.wkv6(**x, output_final_state=True, backend=backend)
        assert rel(y, hf(y_fla)) <= 1e-5 and rel(s, s_fla) <= 1e-5
        y7, s7 = ops.wkv7(**x7, output_final_state=True, backend=backend)
        assert rel(y7, hf(y7_fla)) <= 1e-5 and rel(s7, s7_fla) <= 1e-5


def test_wkv5_is_wkv6_with_constant_decay():
    x = make_inputs("wkv5", 2, 33, 2, 8, dtype=torch.float64, state=True, seed=2)
    y5, s5 = ops.wkv5(**x, output_final_state=True)
    x6 = dict(x, w=x["w"].expand(2, 33, 2, 8))
    y6, s6 = ops.wkv6(**x6, output_final_state=True, backend="reference")
    assert rel(y5, y6) <= 1e-12 and rel(s5, s6) <= 1e-12


# ---------------------------------------------------------------------------- state carrying

def _split(inputs, cut):
    first, second = {}, {}
    for name, x in inputs.items():
        if name == "state":
            continue
        if x.dim() >= 3:  # per-token tensor
            first[name], second[name] = x[:, :cut], x[:, cut:]
        else:
            first[name] = second[name] = x
    return first, second


@pytest.mark.parametrize("op,backend", [(op, "reference") for op in OPS] + FAST,
                         ids=[f"{op}-reference" for op in OPS] + FAST_IDS)
def test_splitting_and_carrying_state_equals_one_call(op, backend):
    T, cut = 37, 20
    x = make_inputs(op, 2, T, 2, 8, dtype=torch.float64, state=True, seed=11)
    y_full, s_full = run(op, x, backend=backend, output_final_state=True)
    a, b = _split(x, cut)
    if op not in BIDIRECTIONAL:
        y_a, s_a = run(op, a, state=x["state"], backend=backend, output_final_state=True)
        y_b, s_b = run(op, b, state=s_a, backend=backend, output_final_state=True)
        y, s = torch.cat([y_a, y_b], 1), s_b
    else:
        left_in, right_in = x["state"][:, 0], x["state"][:, 1]
        _, s_a0 = run(op, a, state=torch.stack([left_in, right_in], 1), backend=backend, output_final_state=True)
        y_b, s_b = run(op, b, state=torch.stack([s_a0[:, 0], right_in], 1), backend=backend,
                       output_final_state=True)
        y_a, s_a = run(op, a, state=torch.stack([left_in, s_b[:, 1]], 1), backend=backend,
                       output_final_state=True)
        y, s = torch.cat([y_a, y_b], 1), torch.stack([s_b[:, 0], s_a[:, 1]], 1)
    assert rel(y, y_full) <= 1e-10
    assert state_rel(op, s, s_full) <= 1e-10


def test_token_by_token_equals_one_call():
    for op in ("wkv4", "wkv5", "wkv6", "wkv7"):
        x = make_inputs(op, 2, 9, 2, 8, dtype=torch.float64, seed=4)
        y_full, s_full = run(op, x, output_final_state=True)
        state, ys = None, []
        for t in range(9):
            step = {n: (v[:, t:t + 1] if v.dim() >= 3 else v) for n, v in x.items()}
            y, state = run(op, step, state=state, output_final_state=True)
            ys.append(y)
        assert rel(torch.cat(ys, 1), y_full) <= 1e-10
        assert state_rel(op, state, s_full) <= 1e-10


# ---------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("op,backend", [(op, "reference") for op in OPS] + FAST,
                         ids=[f"{op}-reference" for op in OPS] + FAST_IDS)
@pytest.mark.parametrize("T", [7, 1], ids=["T7", "T1"])  # T=1: the generation-step paths
def test_gradcheck_every_input(op, backend, T):
    x = make_inputs(op, 2, T, 2, 3, dtype=torch.float64, state=True, seed=13)
    names = list(x)
    # Keep log-decays away from 0 so finite differences never cross the w <= 0 boundary.
    if op != "bi_wkv4":
        x["w"] = x["w"].clamp(max=-0.05)
    leaves = [x[n].clone().requires_grad_(True) for n in names]

    def f(*tensors):
        y, s = run(op, dict(zip(names, tensors)), backend=backend, output_final_state=True)
        return y, s

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("N", [8, 64])  # 64: the cpu kernels' compiled head size
@pytest.mark.parametrize("op,backend", FAST, ids=FAST_IDS)
def test_gradients_match_reference(op, backend, N):
    """Longer than gradcheck can afford (two 64-token snapshot chunks and a partial one): the
    fast backends' gradients equal the reference's, in float64 and (to 1e-5) in float32."""
    x = make_inputs(op, 2, 140 if N == 8 else 70, 2, N, dtype=torch.float64, state=True, seed=17)
    grads = {}
    for backend in ("reference", backend, backend + "/float32"):
        dtype = torch.float32 if backend.endswith("float32") else torch.float64
        leaves = {n: v.detach().to(dtype).requires_grad_(True) for n, v in x.items()}
        y, s = run(op, leaves, backend=backend.split("/")[0], output_final_state=True)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        gs = torch.randn(s.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        if op in PER_CHANNEL:
            gs.select(-2, 2).zero_()  # the logscale is bookkeeping, not a value to differentiate
        ((y * gy.to(dtype)).sum() + (s * gs.to(dtype)).sum()).backward()
        grads[backend] = {n: t.grad for n, t in leaves.items()}
    fast = [b for b in grads if b != "reference"]
    for n in x:
        assert rel(grads[fast[0]][n], grads["reference"][n]) <= 1e-9, n
        assert rel(grads[fast[1]][n], grads["reference"][n]) <= 1e-4, n


@pytest.mark.parametrize("op", PER_CHANNEL)
def test_long_float32_per_channel_scans_keep_float32_accuracy(op):
    """Vision-RWKV's decays are of order 1/T, so a state sums about T terms of similar size: the
    cpu kernels run the scans on float64 triples for float32 inputs too (their float32 scan was
    3.5e-4 off at T = 8000). Outputs, final state and every gradient, against float64."""
    x = make_inputs(op, 1, 8192, 1, 32, dtype=torch.float64, state=True, seed=5)
    got = {}
    for backend, dtype in (("torch", torch.float64), ("cpu", torch.float32)):
        leaves = {n: v.detach().to(dtype).requires_grad_(True) for n, v in x.items()}
        y, s = run(op, leaves, backend=backend, output_final_state=True)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        (y * gy.to(dtype)).sum().backward()
        got[backend] = {"y": y, "state": s, **{"d" + n: t.grad for n, t in leaves.items()}}
    want, fast = got["torch"], got["cpu"]
    assert state_rel(op, fast.pop("state"), want.pop("state")) <= 2e-6
    for n in want:
        assert rel(fast[n], want[n]) <= 2e-6, n


def test_empty_initial_state_gives_finite_gradients():
    for op in ("wkv4", "bi_wkv4"):
        x = make_inputs(op, 1, 12, 1, 4, dtype=torch.float64)
        leaves = {n: v.clone().requires_grad_(True) for n, v in x.items()}
        run(op, leaves)[0].sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in leaves.values())


# ---------------------------------------------------------------------------- long, low precision

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("op", OPS)
def test_long_low_precision_sequences_are_finite(op, dtype):
    x = make_inputs(op, 1, 16384, 1, 64, dtype=dtype, seed=21)
    y, s = run(op, x, output_final_state=True)
    assert y.dtype == dtype
    assert s.dtype == torch.float32
    assert torch.isfinite(y).all() and torch.isfinite(s[..., :2, :] if op in PER_CHANNEL else s).all()


@pytest.mark.parametrize("op", OPS)
def test_autocast_region_does_not_lower_the_ops_precision(op):
    """Inside bf16 autocast the op still accumulates in fp32 (and backends without bf16
    kernels, e.g. triangular solves on CPU, still run)."""
    x = make_inputs(op, 2, 70, 2, 16, dtype=torch.bfloat16, seed=5)
    plain, _ = run(op, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside, _ = run(op, x)
    assert torch.equal(inside, plain)


# ---------------------------------------------------------------------------- validation

def _err(op, x, match, **kw):
    with pytest.raises(ValueError, match=match):
        run(op, x, **kw)


@pytest.mark.parametrize("op", OPS)
def test_bad_input_names_argument_and_shape(op):
    x = make_inputs(op, 2, 5, 2, 4)
    first = "k" if op in PER_CHANNEL else "r"
    _err(op, dict(x, **{first: x[first][0]}), rf"{first} must have shape \[B, T, ")
    _err(op, dict(x, v=x["v"][:, :4]), r"v must have shape \[B=2, T=5, ")
    _err(op, dict(x, u=x["w"][..., :3]) if "u" in x else dict(x, a=x["a"][..., :3]),
         r"(u|a) must have shape")
    _err(op, dict(x, v=x["v"].double()), "must share one dtype")
    _err(op, dict(x, v=x["v"].to("meta")), "one device")
    _err(op, dict(x, v=x["v"].long()), "v must be a floating-point tensor")
    _err(op, dict(x, **{first: x[first][:, :0]}, **{n: t[:, :0] for n, t in x.items()
                                                     if t.dim() >= 3 and n != first}), "empty input")
    state = make_inputs(op, 3, 5, 2, 4, state=True)["state"]
    _err(op, x, r"state must have shape \[B=2", state=state)
    _err(op, x, "unknown WKV backend 'nope'", backend="nope")


@pytest.mark.parametrize("op", OPS)
def test_bad_decays_are_rejected(op):
    x = make_inputs(op, 1, 5, 2, 4)
    bad = x["w"].clone()
    bad.view(-1)[0] = math.nan
    _err(op, dict(x, w=bad), "w .*NaN")
    if op != "bi_wkv4":  # the bidirectional v4 decay may take either sign
        _err(op, dict(x, w=x["w"].abs() + 0.1), r"w is the log of the per-step decay and must be <= 0")
    else:
        run(op, dict(x, w=x["w"].abs() + 0.1))


def test_decay_values_are_checked_where_that_costs_no_device_sync(monkeypatch):
    """Reading the decay back for its value checks would stall a GPU's queue on every call:
    checked on the CPU, elsewhere only with $RWKV_HF_CHECK_VALUES=1; shapes always."""
    monkeypatch.delenv(ops.CHECK_VALUES_ENV, raising=False)
    assert ops._checks_values(torch.device("cpu"))
    assert not ops._checks_values(torch.device("cuda", 0))
    monkeypatch.setenv(ops.CHECK_VALUES_ENV, "1")
    assert ops._checks_values(torch.device("cuda", 0))
    # The gate is the only thing between a bad decay and the kernels.
    x = make_inputs("wkv7", 1, 5, 1, 4)
    bad = x["w"].abs() + 0.1
    monkeypatch.setattr(ops, "_checks_values", lambda device: False)
    ops.wkv7(**dict(x, w=bad), backend="torch")
    _err("wkv7", dict(x, v=x["v"][:, :3]), r"v must have shape")


def test_backend_from_environment(monkeypatch):
    x = make_inputs("wkv6", 1, 5, 1, 4, dtype=torch.float64)
    monkeypatch.setenv(ops.BACKEND_ENV, "reference")
    y_env = ops.wkv6(**x)[0]
    monkeypatch.setenv(ops.BACKEND_ENV, "bogus")
    with pytest.raises(ValueError, match="RWKV_HF_WKV_BACKEND"):
        ops.wkv6(**x)
    monkeypatch.delenv(ops.BACKEND_ENV)
    assert rel(ops.wkv6(**x)[0], y_env) <= 1e-12
    assert ops.available_backends() == ["reference", "torch", "cpu"]


def test_final_state_only_on_request():
    x = make_inputs("wkv7", 1, 3, 1, 4)
    y, s = ops.wkv7(**x)
    assert s is None and y.shape == (1, 3, 1, 4)


def test_cuda_backend_that_cannot_run_warns_once_and_falls_back(monkeypatch):
    from rwkv_hf.ops import cuda_backend

    monkeypatch.setattr(ops, "_warned", set())
    x = make_inputs("wkv7", 1, 6, 1, 4, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="cuda backend cannot run wkv7 .*CUDA tensors.*torch backend"):
        y = ops.wkv7(**x, backend="cuda")[0]
    assert rel(y, ops.wkv7(**x, backend="torch")[0]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not again
        ops.wkv7(**x, backend="cuda")
    assert cuda_backend.unsupported_reason("wkv7", r=x["r"]) is not None
    if not torch.cuda.is_available():
        assert cuda_backend.available() == (False, "no CUDA device visible to torch")


def test_cuda_first_use_says_it_compiles_and_a_later_load_does_not(monkeypatch, tmp_path, caplog):
    """The JIT build of the first CUDA call takes tens of seconds: load() says so (and where
    it caches); a process that finds the build reuses it silently. The GPU and the compiler
    are stood in for; the real build is tests/test_cuda_build.py."""
    import logging
    import types

    from rwkv_hf.ops import cuda_backend

    monkeypatch.setattr(cuda_backend, "_ext", None)
    monkeypatch.setattr(cuda_backend, "_load_error", None)
    monkeypatch.setenv(cuda_backend.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    built = types.ModuleType("fake_wkv")
    compiled = []
    monkeypatch.setattr(cuda_backend, "_compile",
                        lambda archs, verbose=False: compiled.append(archs) or (built, "x.so"))
    with caplog.at_level(logging.INFO, logger=cuda_backend.__name__):
        assert cuda_backend.load() is built
    assert compiled == [["9.0"]]
    said = [r.getMessage() for r in caplog.records]
    assert any("compiling the WKV CUDA extension for sm_90" in m and str(tmp_path) in m for m in said)
    assert any("compiled the WKV CUDA extension in" in m for m in said)

    caplog.clear()
    monkeypatch.setattr(cuda_backend, "_ext", None)
    monkeypatch.setattr(cuda_backend, "_find_prebuilt", lambda needed: ("fake_wkv", "x.so"))
    monkeypatch.setattr(cuda_backend, "_import_built", lambda name, path: built)
    with caplog.at_level(logging.INFO, logger=cuda_backend.__name__):
        assert cuda_backend.load() is built
    assert compiled == [["9.0"]] and not caplog.records


def test_a_failed_cuda_build_is_said_in_one_line_that_names_the_error():
    """torch's ninja failure starts with its prefix and the whole nvcc command line (over 800
    characters here); the summary keeps the compiler's error lines instead."""
    from rwkv_hf.ops import cuda_backend

    command = "/usr/local/cuda/bin/nvcc " + " ".join(f"-I/some/include/dir{i}" for i in range(60))
    ninja = RuntimeError(
        f"Error building extension 'rwkv_hf_wkv_0123456789': [1/5] {command} -c wkv7.cu -o wkv7.cuda.o\n"
        "FAILED: wkv7.cuda.o\n"
        f"{command} -c wkv7.cu -o wkv7.cuda.o\n"
        '/src/cuda_ext/wkv7.cu(120): error: identifier "s_q" is undefined\n'
        '1 error detected in the compilation of "/src/cuda_ext/wkv7.cu".\n'
        "ninja: build stopped: subcommand failed.\n")
    said = cuda_backend._summarize(ninja)
    assert said.startswith("compiling the rwkv_hf CUDA extension failed: ")
    assert 'wkv7.cu(120): error: identifier "s_q" is undefined' in said
    assert "Error building extension" not in said and "\n" not in said and len(said) < 900
    mismatch = RuntimeError("The detected CUDA version (12.4) mismatches the version that was used to "
                            "compilePyTorch (13.0). Please make sure to use the same CUDA versions.")
    assert "CUDA version (12.4) mismatches" in cuda_backend._summarize(mismatch)


def test_cpu_backend_without_a_compiler_falls_back_once(monkeypatch, tmp_path):
    """No working C++ compiler: one warning saying why, then the torch backend, same results."""
    from rwkv_hf.ops import cpu_backend
    monkeypatch.setattr(cpu_backend, "_lib", None)
    monkeypatch.setattr(cpu_backend, "_load_error", None)
    monkeypatch.setattr(ops, "_warned", set())
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv(cpu_backend.CACHE_ENV, str(tmp_path / "cache"))
    x = make_inputs("wkv7", 1, 5, 1, 4, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="compiled CPU kernels are unavailable") as record:
        y, _ = ops.wkv7(**x)
        ops.wkv6(**make_inputs("wkv6", 1, 5, 1, 4, dtype=torch.float64))
    assert len(record) == 1
    assert rel(y, ops.wkv7(**x, backend="reference")[0]) <= 1e-10
    assert "cpu" not in ops.available_backends()


def test_ops_demo_tours_every_cpu_backend(capsys):
    from rwkv_hf.cli import main
    assert main(["demo", "--ops", "--seq-len", "20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "torch tok/s" in lines[2] and "cpu tok/s" in lines[2]
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert set(rows) == set(OPS)
    for op, row in rows.items():  # op, reference tok/s, then (tok/s, speed-up, max rel. diff) per backend
        assert float(row[4]) <= 1e-5
        assert float(row[7]) <= 1e-5 if op in cpu_backend.OPS else row[5:8] == ["-"] * 3


def test_cpu_kernels_build_in_the_temp_dir_when_the_cache_is_unwritable(monkeypatch, tmp_path):
    from rwkv_hf.ops import cpu_backend
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(cpu_backend.CACHE_ENV, str(blocker / "cache"))  # cannot be created
    monkeypatch.setattr(cpu_backend.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    path = cpu_backend.build()
    assert path.startswith(str(tmp_path / "tmp" / "rwkv_hf-cpu-")) and os.path.isfile(path)
    assert cpu_backend.build() == path  # found, not rebuilt
    lib = cpu_backend._declare(ctypes.CDLL(path))
    assert lib.rwkv_hf_wkv_cpu_chunk() == 64


# ---------------------------------------------------------------------------- farthest point sampling

def brute_force_fps(points, n):
    """Farthest point sampling as its definition, in float64 Python loops over one cloud."""
    taken = [0]
    for _ in range(n - 1):
        d = torch.stack([((points - points[t]) ** 2).sum(-1) for t in taken]).amin(0)
        taken.append(int(d.argmax()))
    return taken


FPS_BACKENDS = ["reference", "torch", "cpu"]


@pytest.mark.parametrize("backend", FPS_BACKENDS)
def test_farthest_point_sample_is_its_definition(backend):
    points = clouds(3, 50, seed=1, dtype=torch.float64)
    idx = ops.farthest_point_sample(points, 20, backend=backend)
    assert idx.dtype == torch.long and idx.shape == (3, 20)
    assert [idx[b].tolist() for b in range(3)] == [brute_force_fps(points[b], 20) for b in range(3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("B,N,n", [(3, 100, 40), (2, 700, 700), (1, 5000, 300), (4, 9, 1), (0, 8, 3)])
def test_farthest_point_sample_cpu_kernel_picks_the_torch_forms_points(B, N, n, dtype):
    """The compiled kernel and the torch form pick the same points, bit for bit: the same
    roundings of the distance (16-bit points are sampled in float32)."""
    points = clouds(B, N, seed=N + n, dtype=dtype)
    want = ops.farthest_point_sample(points, n, backend="torch")
    assert torch.equal(ops.farthest_point_sample(points, n, backend="cpu"), want)
    assert torch.equal(ops.farthest_point_sample(points, n), want)  # cpu by default
    if dtype == torch.bfloat16:
        assert torch.equal(want, ops.farthest_point_sample(points.float(), n, backend="torch"))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_farthest_point_sample_breaks_ties_by_the_first_index(backend):
    """On a grid every distance is an exact integer, so most steps are ties: the first index of
    the largest distance is taken, as torch.argmax does (and the brute-force definition)."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(5.0)] * 3, indexing="ij"), -1).reshape(1, -1, 3)
    grid = torch.cat([grid, grid.flip(1)])  # the same cloud in reverse order: other ties
    idx = ops.farthest_point_sample(grid, 60, backend=backend)
    assert [idx[b].tolist() for b in range(2)] == [brute_force_fps(grid[b].double(), 60) for b in range(2)]


def test_farthest_point_sample_rounds_the_distance_as_the_torch_form():
    """Clouds whose pick depends on the distance's roundings (random_inputs.rounding_ties): the
    kernel ties where the torch form does. A kernel whose compiler contracted the distance into
    fused multiply-adds picks the other point in about half of them (30 of 64, measured by
    building point_cpu.cpp without its fp-contract=off attribute)."""
    points = rounding_ties(64)
    assert ops.farthest_point_sample(points, 2, backend="torch")[:, 1].eq(1).all()
    assert ops.farthest_point_sample(points, 2, backend="cpu")[:, 1].eq(1).all()


def test_farthest_point_sample_rejects_bad_input():
    points = clouds(2, 10, seed=0)
    with pytest.raises(ValueError, match=r"shape \[B, N, 3\]"):
        ops.farthest_point_sample(points[..., :2], 4)
    with pytest.raises(ValueError, match="floating-point"):
        ops.farthest_point_sample(points.long(), 4)
    with pytest.raises(ValueError, match="floating-point"):
        ops.farthest_point_sample(points.tolist(), 4)
    for n in (0, 11, 2.0, True):
        with pytest.raises(ValueError, match=r"n must be an int in \[1, N=10\]"):
            ops.farthest_point_sample(points, n)
    bad = points.clone()
    bad[1, 3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        ops.farthest_point_sample(bad, 4)


def test_farthest_point_sample_compiles_through_its_operator():
    """torch.compile(fullgraph=True) traces the cpu kernel as one operator (the torch form would
    unroll n - 1 steps into the graph) and gives the eager indices."""
    points = clouds(2, 300, seed=3)
    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return gm

    fn = torch.compile(lambda p: ops.farthest_point_sample(p, 64, backend="cpu"), fullgraph=True, backend=keep)
    assert torch.equal(fn(points), ops.farthest_point_sample(points, 64, backend="torch"))
    calls = [str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]
    assert calls == ["rwkv_hf.cpu_fps.default"], calls
