"""The CUDA extension's kernels, run on the CPU under an emulation of the CUDA execution model
(tests/cuda_emulation.py): every op through the public ``rwkv_hf.ops`` functions and the cuda
backend's autograd Functions (PointRWKV's scans through ``cuda_backend.point_scan``), against
the float64 reference, in float32, bfloat16 and float16, outputs, final states and every
gradient; the registered operators' fake
implementations (opcheck) and torch.compile through them. One build of the emulated
extension (~50 s), and one more with sanitizers (out-of-bounds and misaligned accesses, ~2 min;
run in processes of their own). The checks that these can fail switch on bugs planted in both
builds (cuda_emulation.MUTANTS) instead of building broken copies.

A GPU is still needed for what the emulation cannot show (speed, the device's float
arithmetic, real launches): ``benchmarks/gpu_check.py``.
"""
import pytest
import torch

from cuda_emulation import MUTANT_ENV, MUTANTS, build, run_sanitized
from rwkv_hf import ops
from rwkv_hf.ops import cuda_backend
from rwkv_hf.ops.random_inputs import make_clouds, make_inputs, rounding_ties

PER_CHANNEL = ("wkv4", "bi_wkv4")
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}

# (op, B, T, H, N, dtype, chunk): T = 1 (a generation step), 17 (one partial stage), 128
# (snapshot chunks ending exactly at T), 150 (a partial last chunk); every head size the kernels
# have; chunk > 0: the chunk-parallel form (tokens per chunk, forced with $RWKV_HF_CUDA_CHUNK; on
# a GPU it is chosen for few (batch, head) pairs and long sequences; the per-channel ops take any
# chunk length, down to 1 token, the matrix-state ops round it up to a multiple of 64).
CASES = []
for _op in ("wkv4", "bi_wkv4", "wkv5", "wkv6", "bi_wkv6", "wkv7"):
    CASES += [(_op, 2, 1, 2, 16, torch.float32, 0), (_op, 2, 17, 2, 16, torch.float32, 0),
              (_op, 2, 150, 2, 16, torch.float32, 0), (_op, 2, 150, 2, 16, torch.bfloat16, 0),
              (_op, 1, 70, 1, 32, torch.float16, 0)]
    if _op in PER_CHANNEL:
        CASES += [(_op, 1, 130, 1, 50, torch.float32, 0),  # C = 50: a partial thread block
                  (_op, 2, 150, 2, 16, torch.float32, 16), (_op, 1, 130, 1, 50, torch.float32, 7),
                  (_op, 2, 150, 2, 16, torch.bfloat16, 32), (_op, 1, 64, 1, 8, torch.float32, 1),
                  (_op, 2, 17, 2, 16, torch.float16, 16)]
    else:
        CASES += [(_op, 1, 128, 1, 64, torch.float32, 0), (_op, 1, 40, 1, 128, torch.float32, 0),
                  (_op, 1, 130, 2, 32, torch.float32, 0),
                  (_op, 2, 150, 2, 16, torch.float32, 64), (_op, 1, 17, 1, 16, torch.float32, 64),
                  (_op, 1, 300, 2, 64, torch.float32, 128), (_op, 1, 200, 1, 128, torch.float32, 64),
                  (_op, 2, 150, 2, 32, torch.bfloat16, 64)]


@pytest.fixture(scope="module")
def emulated():
    return build()


@pytest.fixture
def on_emulated_cuda(emulated, monkeypatch):
    """Route rwkv_hf.ops' calls to the cuda backend, whose kernels run emulated on CPU tensors."""
    monkeypatch.setattr(cuda_backend, "_ext", emulated)
    monkeypatch.setattr(cuda_backend, "_act_dtype", lambda op, *xs: xs[0].dtype)
    monkeypatch.setattr(ops, "_choose", lambda op, requested, tensors: requested or "cuda")
    return emulated


def spy_on(ext, record):
    """``ext`` with record(name, args) called before each call of its functions."""
    class Spy:
        def __getattr__(self, name):
            def call(*args):
                record(name, args)
                return getattr(ext, name)(*args)
            return call
    return Spy()


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def canon(state, like):
    """Per-channel states (num, den, logscale): what they represent, on the reference's scale."""
    scale = torch.exp(state.select(-2, 2).double() - like.select(-2, 2).double())
    return torch.stack([state.select(-2, 0).double() * scale, state.select(-2, 1).double() * scale], -2)


@pytest.mark.parametrize("op,B,T,H,N,dtype,chunk", CASES,
                         ids=[f"{c[0]}-B{c[1]}-T{c[2]}-H{c[3]}-N{c[4]}-{str(c[5])[6:]}"
                              + (f"-chunk{c[6]}" if c[6] else "") for c in CASES])
def test_kernel_matches_float64_reference(on_emulated_cuda, monkeypatch, op, B, T, H, N, dtype, chunk):
    monkeypatch.setenv(cuda_backend.CHUNK_ENV, str(chunk))
    # Values representable in every dtype tested, so one float64 run judges them all.
    x16 = make_inputs(op, B, T, H, N, dtype=torch.bfloat16, state=True, seed=T + 7 * N + B)
    names = list(x16)
    x64 = {n: t.double().requires_grad_() for n, t in x16.items()}
    y64, s64 = getattr(ops, op)(**x64, output_final_state=True, backend="reference")
    g = torch.Generator().manual_seed(T)
    gy = torch.randn(y64.shape, generator=g, dtype=torch.float64).to(torch.bfloat16).double()
    gs = torch.randn(s64.shape, generator=g, dtype=torch.float64).to(torch.bfloat16).double()
    if op in PER_CHANNEL:  # keep the logscale's gradient modest (it scales num and den)
        gs.select(-2, 2).mul_(0.1)
    want = torch.autograd.grad([y64, s64], [x64[n] for n in names], [gy, gs])

    x = {n: (t.float() if n == "state" else t.to(dtype)).requires_grad_() for n, t in x16.items()}
    y, s = getattr(ops, op)(**x, output_final_state=True)
    got = torch.autograd.grad([y, s], [x[n] for n in names], [gy.to(y.dtype), gs.to(s.dtype)])

    assert y.dtype == dtype and s.dtype == torch.float32
    errs = {"y": rel(y, y64), "state": rel(canon(s, s64), canon(s64, s64)) if op in PER_CHANNEL
            else rel(s, s64)}
    for n, a, b in zip(names, got, want):
        assert a.dtype == x[n].dtype, n
        errs["d" + n] = rel(a, b)
    bad = {k: f"{e:.2e}" for k, e in errs.items() if not e <= TOL[dtype]}
    assert not bad, f"relative errors over {TOL[dtype]}: {bad}"


def test_kernels_run_in_the_emulation(on_emulated_cuda, monkeypatch):
    """The routing above really reaches the extension's kernels (and not a fallback)."""
    calls = []
    real = on_emulated_cuda.wkv7_forward
    monkeypatch.setattr(cuda_backend, "_ext", type("Spy", (), {
        "wkv7_forward": staticmethod(lambda *a: calls.append(1) or real(*a))})())
    x = make_inputs("wkv7", 1, 5, 1, 16)
    ops.wkv7(**x)
    assert calls == [1]


def test_entry_points_reject_bad_input(emulated):
    x = {n: t.float().contiguous() for n, t in make_inputs("wkv7", 1, 4, 1, 16, state=True).items()}
    args = [x[n] for n in ("r", "k", "v", "w", "a", "b", "state")]
    emulated.wkv7_forward(*args, False)
    bad = make_inputs("wkv7", 1, 4, 2, 24, state=True)  # head size 24: no kernel
    with pytest.raises(RuntimeError, match="head size must be 16, 32, 64 or 128"):
        emulated.wkv7_forward(*[bad[n].float() for n in ("r", "k", "v", "w", "a", "b", "state")], False)
    with pytest.raises(RuntimeError, match="must have dtype"):
        emulated.wkv7_forward(args[0], args[1].double(), *args[2:], False)
    with pytest.raises(RuntimeError, match="w must be float32"):
        emulated.wkv7_forward(*args[:3], args[3].bfloat16(), *args[4:], False)
    with pytest.raises(RuntimeError, match="per-token inputs must be float32, bfloat16 or float16"):
        emulated.wkv7_forward(*[a.double() for a in args[:3]], args[3],
                              *[a.double() for a in args[4:6]], args[6], False)


def test_emulation_catches_a_missing_barrier(on_emulated_cuda, monkeypatch):
    """The emulation runs a block's threads in random order between barriers, so a kernel
    missing a __syncthreads computes wrong values here (as it may on a GPU): RWKV-7's backward
    sweep without the barrier between the threads' row partial sums and their reduction (the
    mutant planted in the build; the same call with it dormant matches)."""
    x = make_inputs("wkv7", 2, 150, 2, 16, seed=3)
    x64 = {n: t.detach().double().requires_grad_() for n, t in x.items()}
    ops.wkv7(**x64, backend="reference")[0].sum().backward()
    errors = []
    for mutant in (None, "missing_barrier"):
        if mutant:
            monkeypatch.setenv(MUTANT_ENV, str(MUTANTS[mutant][0]))
        leaves = {n: t.clone().requires_grad_() for n, t in x.items()}
        ops.wkv7(**leaves)[0].sum().backward()
        errors.append(max(rel(leaves[n].grad, x64[n].grad) for n in x))
    assert errors[0] < 1e-4 and errors[1] > 1e-2, errors


def test_kernels_stay_inside_their_memory():
    """Every case above, forward and backward, under AddressSanitizer (and the alignment check
    of UndefinedBehaviorSanitizer): no kernel reads or writes outside the tensors it is given
    or its shared-memory arrays, at partial stages, partial chunks and partial thread blocks
    (the official Vision-RWKV kernel read k and v past the end whenever T was not a multiple of
    32), and every vector load is aligned to its size, also for inputs whose data starts off the
    16-byte grid (the host copies them for the forward's vector loads)."""
    cases = [(op, B, T, H, N, str(dt)[6:], chunk) for op, B, T, H, N, dt, chunk in CASES]
    cases += [(op, 1, 70, 2, 16, dt, chunk, True) for op in ("wkv5", "wkv6", "bi_wkv6", "wkv7")
              for dt, chunk in (("float32", 0), ("bfloat16", 64))]
    cases += [("point_wkv", B, T, H, N, str(dt)[6:], 0) for B, T, H, N, dt, _ in POINT_CASES]
    cases += [("point_wkv", 1, 70, 2, 16, "bfloat16", 0, True)]
    cases += [("farthest_point_sample", B, N, n, str(dt)[6:]) for B, N, n, dt in FPS_CASES]
    run = run_sanitized(cases)
    assert run.returncode == 0, run.stderr[-6000:]
    assert run.stdout.count(" ok\n") == len(cases)


def test_sanitizer_catches_a_read_past_the_end_and_a_misaligned_load():
    """The check above can fail, on either of two bugs (mutants planted in its build, a process
    each): RWKV-7's forward staging one token too many (past the end of the sequence in its
    last, partial stage) is reported as a heap-buffer-overflow; RWKV-6's forward reading its
    keys from shared memory one float off (a 16-byte load from a 4-byte-aligned address, which
    a GPU refuses with "misaligned address" and x86 would do silently) as a misaligned load."""
    run = run_sanitized([("wkv7", 2, 17, 2, 16, "float32", 0)], mutant="read_past_the_end")
    assert run.returncode != 0
    assert "AddressSanitizer: heap-buffer-overflow" in run.stderr and "wkv7_fwd_kernel" in run.stderr
    run = run_sanitized([("wkv6", 2, 17, 2, 16, "float32", 0)], mutant="misaligned_load")
    assert run.returncode != 0
    assert "misaligned address" in run.stderr and "requires 16 byte alignment" in run.stderr


@pytest.mark.parametrize("op", ["wkv6", "wkv7"])
def test_chunked_form_runs_in_chunks(emulated, op):
    """chunk > 0 really takes the chunk-parallel form (it returns one transition per chunk for
    the backward), and gives the sequential form's results."""
    names = ("r", "k", "v", "w", "u", "state") if op == "wkv6" else ("r", "k", "v", "w", "a", "b", "state")
    x = make_inputs(op, 1, 150, 2, 16, state=True, seed=5)
    args = [x[n].float().contiguous() for n in names]
    fwd = getattr(emulated, op + "_forward")
    seq, chunked = fwd(*args, True, 0), fwd(*args, True, 64)
    assert seq[-1].numel() == 0
    assert tuple(chunked[-1].shape) == (1, 2, 3, 16, 16)  # 150 tokens: 3 chunks of 64
    for a, b in zip(seq[:-1], chunked[:-1]):
        assert rel(b, a) < 1e-6
    assert fwd(*args, False, 64)[-1].numel() == 0  # nothing kept without gradients
    with pytest.raises(RuntimeError, match="chunk transitions of the forward are missing"):
        bwd = getattr(emulated, op + "_backward")
        saved = chunked[2:-1]  # snapshots (and sa)
        bwd(*args[:-1], *saved, seq[-1], seq[0], torch.zeros_like(args[-1]), 64)


@pytest.mark.parametrize("chunk", [0, 64])
def test_wkv6_reverse_reads_the_sequence_backwards(emulated, chunk):
    """reverse=True (bi_wkv6's right-to-left half) equals the forward scan of the flipped
    sequence, outputs and gradients, without the flipped copies."""
    x = make_inputs("wkv6", 2, 150, 2, 16, state=True, seed=9)
    r, k, v, w, u, s = (x[n].float().contiguous() for n in ("r", "k", "v", "w", "u", "state"))
    fl = [t.flip(1).contiguous() for t in (r, k, v, w)]
    y, sT, snap, trans = emulated.wkv6_forward(r, k, v, w, u, s, True, chunk, True)
    y2, sT2, snap2, trans2 = emulated.wkv6_forward(*fl, u, s, True, chunk, False)
    assert rel(y, y2.flip(1)) < 1e-6 and rel(sT, sT2) < 1e-6
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    gs = torch.randn(sT.shape, generator=torch.Generator().manual_seed(2))
    g = emulated.wkv6_backward(r, k, v, w, u, snap, trans, gy, gs, chunk, True)
    g2 = emulated.wkv6_backward(*fl, u, snap2, trans2, gy.flip(1).contiguous(), gs, chunk, False)
    for a, b in zip(g[:4], g2[:4]):  # gr, gk, gv, gw: per token
        assert rel(a, b.flip(1)) < 1e-6
    for a, b in zip(g[4:], g2[4:]):  # gu partials (per 64-token chunk of the scan), gstate
        assert rel(a, b) < 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("chunk", [0, 64])
def test_bi_wkv6_rounds_once(on_emulated_cuda, monkeypatch, dtype, chunk):
    """Bidirectional v6 in bfloat16 / float16: y and the gradients of r, k, v are the float32
    results (its two halves summed in float32) rounded once, bit for bit; the halves rounded
    separately and summed in the low precision would differ in the last bit here and there."""
    monkeypatch.setenv(cuda_backend.CHUNK_ENV, str(chunk))
    x16 = make_inputs("bi_wkv6", 2, 150, 2, 16, dtype=dtype, state=True, seed=chunk + 3)
    names = list(x16)
    g = torch.Generator().manual_seed(4)
    gy = torch.randn(x16["v"].shape, generator=g).to(dtype)
    out = {}
    for run_dtype in (dtype, torch.float32):
        x = {n: (t.float() if n == "state" else t.to(run_dtype)).requires_grad_() for n, t in x16.items()}
        y, _ = ops.bi_wkv6(**x, output_final_state=True)
        grads = torch.autograd.grad(y, [x[n] for n in names], gy.to(run_dtype))
        out[run_dtype] = [y] + list(grads)
    for name, low, full in zip(["y"] + names, out[dtype], out[torch.float32]):
        assert low.dtype == (torch.float32 if name == "state" else dtype), name
        assert torch.equal(low, full.to(low.dtype)), name


@pytest.mark.parametrize("op", ["wkv6", "bi_wkv6", "wkv7"])
@pytest.mark.parametrize("chunk", [0, 64])
def test_decay_in_the_activations_dtype_is_read_as_it_is(on_emulated_cuda, monkeypatch, op, chunk):
    """A bfloat16 log-decay w reaches the kernels as it is (no float32 copy), forwards and
    backwards: y, the final state and every gradient equal, bit for bit, those of the same w in
    float32, and w's gradient comes back in bfloat16 (the float32 one rounded once)."""
    monkeypatch.setenv(cuda_backend.CHUNK_ENV, str(chunk))
    x16 = make_inputs(op, 2, 150, 2, 16, dtype=torch.bfloat16, state=True, seed=11)
    names = list(x16)
    seen = []

    class Spy:  # records the dtype of w (the fourth argument) at every call of the extension
        def __getattr__(self, name):
            def call(*args, **kwargs):
                seen.append((name, args[3].dtype))
                return getattr(on_emulated_cuda, name)(*args, **kwargs)
            return call

    monkeypatch.setattr(cuda_backend, "_ext", Spy())
    g = torch.Generator().manual_seed(12)
    gy = torch.randn(x16["v"].shape, generator=g).to(torch.bfloat16)
    out = {}
    for w_dtype in (torch.bfloat16, torch.float32):
        x = {n: (t.float() if n == "state" or (n == "w" and w_dtype == torch.float32) else t)
             .detach().requires_grad_() for n, t in x16.items()}
        y, s = getattr(ops, op)(**x, output_final_state=True)
        gs = torch.randn(s.shape, generator=torch.Generator().manual_seed(13))
        out[w_dtype] = (y, s, torch.autograd.grad([y, s], [x[n] for n in names], [gy, gs]))
    assert seen[:2] == [(f"{op}_forward", torch.bfloat16), (f"{op}_backward", torch.bfloat16)]
    assert seen[2:] == [(f"{op}_forward", torch.float32), (f"{op}_backward", torch.float32)]
    (y1, s1, g1), (y2, s2, g2) = out[torch.bfloat16], out[torch.float32]
    assert torch.equal(y1, y2) and torch.equal(s1, s2)
    for n, a, b in zip(names, g1, g2):
        if n == "w":
            assert a.dtype == torch.bfloat16 and b.dtype == torch.float32
            assert torch.equal(a, b.to(torch.bfloat16)), n
        else:
            assert torch.equal(a, b), n


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [0, 64])
def test_bi_wkv6_halves_at_once_equal_one_after_the_other(on_emulated_cuda, monkeypatch, dtype, chunk):
    """bi_wkv6's two scans at once (two streams; one pass sums their float32 outputs), one after
    the other (the second adds the first's as it writes), and as the backend runs them (the
    forward's at once, the backward's in turn) give the same results, bit for bit: y, the final
    states and every gradient."""
    monkeypatch.setenv(cuda_backend.CHUNK_ENV, str(chunk))
    x16 = make_inputs("bi_wkv6", 2, 150, 2, 16, dtype=dtype, state=True, seed=chunk + 21)
    names = list(x16)
    calls = []
    real = {n: getattr(on_emulated_cuda, n) for n in ("bi_wkv6_forward", "bi_wkv6_backward")}

    class Spy:  # records the `concurrent` argument of bi_wkv6's calls
        def __getattr__(self, name):
            def call(*args):
                calls.append(args[-1])
                return real[name](*args)
            return call

    monkeypatch.setattr(cuda_backend, "_ext", Spy())
    g = torch.Generator().manual_seed(22)
    gy = torch.randn(x16["v"].shape, generator=g).to(dtype)
    gs = torch.randn(2, 2, 2, 16, 16, generator=g)
    out = []
    for rule in (lambda backward, device: True, lambda backward, device: False,
                 lambda backward, device: not backward):  # the last: halves_concurrent on a GPU
        monkeypatch.setattr(cuda_backend, "halves_concurrent", rule)
        x = {n: t.detach().requires_grad_() for n, t in x16.items()}
        y, s = ops.bi_wkv6(**x, output_final_state=True)
        out.append([y, s, *torch.autograd.grad([y, s], [x[n] for n in names], [gy, gs])])
    assert calls == [True, True, False, False, True, False]
    for other in out[1:]:
        for name, a, b in zip(["y", "state'"] + names, out[0], other):
            assert a.dtype == b.dtype and torch.equal(a, b), name


@pytest.mark.parametrize("op", ["wkv5", "wkv6", "bi_wkv6", "wkv7"])
@pytest.mark.parametrize("chunk", [0, 64])
def test_final_state_off_the_loss_is_a_zero_gradient_without_a_tensor(on_emulated_cuda, monkeypatch,
                                                                     op, chunk):
    """When the final state does not reach the loss (a training step), the backward passes the
    extension an empty gsT and the kernels start from a zero gradient without reading one: every
    gradient equals, bit for bit, the one from an explicit zero gsT (bi_wkv6 with its halves one
    after the other and at once)."""
    monkeypatch.setenv(cuda_backend.CHUNK_ENV, str(chunk))
    x0 = {n: t.float() for n, t in make_inputs(op, 2, 150, 2, 16, state=True, seed=chunk + 41).items()}
    names = list(x0)
    kind = {"wkv5": "wkv6", "wkv6": "wkv6", "bi_wkv6": "bi_wkv6", "wkv7": "wkv7"}[op]
    at = {"wkv6": 8, "bi_wkv6": 10, "wkv7": 10}[kind]  # gstate's position in the backward's call
    seen = []  # the size of the gsT each backward gets

    def record(name, args):
        if name.endswith("_backward"):
            seen.append(args[at].numel())

    monkeypatch.setattr(cuda_backend, "_ext", spy_on(on_emulated_cuda, record))
    gy = torch.randn(x0["v"].shape, generator=torch.Generator().manual_seed(42))
    for concurrent in ((False, True) if op == "bi_wkv6" else (False,)):
        monkeypatch.setattr(cuda_backend, "halves_concurrent", lambda *a, c=concurrent: c)
        seen.clear()
        x = {n: t.detach().requires_grad_() for n, t in x0.items()}
        y, s = getattr(ops, op)(**x, output_final_state=True)
        off = torch.autograd.grad(y, [x[n] for n in names], gy, retain_graph=True)
        zero = torch.autograd.grad([y, s], [x[n] for n in names], [gy, torch.zeros_like(s)])
        assert seen == [0, s.numel()]
        for n, a, b in zip(names, off, zero):
            assert torch.equal(a, b), (n, concurrent)


@pytest.mark.parametrize("op", ["wkv5", "wkv6", "bi_wkv6", "wkv7"])
@pytest.mark.parametrize("chunk", [0, 64])
def test_no_initial_state_is_a_zero_state_without_a_tensor(on_emulated_cuda, monkeypatch, op, chunk):
    """Without an initial state, rwkv_hf.ops passes the cuda backend None and the extension an
    empty state: the kernels start from zero without a tensor of zeros to fill and read. y, the
    final state and every gradient equal, bit for bit, those from an explicit zero state
    (bi_wkv6 with its halves one after the other and at once)."""
    monkeypatch.setenv(cuda_backend.CHUNK_ENV, str(chunk))
    x0 = {n: t.float() for n, t in make_inputs(op, 2, 150, 2, 16, state=True, seed=chunk + 51).items()}
    names = [n for n in x0 if n != "state"]
    at = 6 if op == "wkv7" else 5  # the state's position in the forward's call
    seen = []  # the size of the state each forward gets

    def record(name, args):
        if name.endswith("_forward"):
            seen.append(args[at].numel())

    monkeypatch.setattr(cuda_backend, "_ext", spy_on(on_emulated_cuda, record))
    g = torch.Generator().manual_seed(52)
    gy = torch.randn(x0["v"].shape, generator=g)
    gs = torch.randn(x0["state"].shape, generator=g)
    for concurrent in ((False, True) if op == "bi_wkv6" else (False,)):
        monkeypatch.setattr(cuda_backend, "halves_concurrent", lambda *a, c=concurrent: c)
        seen.clear()
        out = []
        for state in (None, torch.zeros_like(x0["state"])):
            x = {n: x0[n].detach().requires_grad_() for n in names}
            y, s = getattr(ops, op)(**x, state=state, output_final_state=True)
            out.append([y, s, *torch.autograd.grad([y, s], [x[n] for n in names], [gy, gs])])
        assert seen == [0, x0["state"].numel()]
        for n, a, b in zip(["y", "state"] + names, *out):
            assert torch.equal(a, b), (n, concurrent)


def test_wkv5_decay_is_read_in_place(on_emulated_cuda, monkeypatch):
    """RWKV-5's decay [H, K] reaches the kernels as it is (not expanded to [B, T, H, K] and
    copied), in the forward and the backward, and its gradient comes back summed over batch
    and time."""
    seen = []
    real = on_emulated_cuda

    def spy(name):
        return staticmethod(lambda *a, **kw: seen.append((name, tuple(a[3].shape))) or getattr(real, name)(*a, **kw))

    monkeypatch.setattr(cuda_backend, "_ext", type("Spy", (), {n: spy(n) for n in ("wkv6_forward", "wkv6_backward")})())
    x = {n: t.requires_grad_() for n, t in make_inputs("wkv5", 2, 150, 2, 16, state=True, seed=2).items()}
    y, s = ops.wkv5(**x, output_final_state=True)
    (y.sum() + s.sum()).backward()
    assert seen == [("wkv6_forward", (2, 16)), ("wkv6_backward", (2, 16))]
    x64 = {n: t.detach().double().requires_grad_() for n, t in x.items()}
    y64, s64 = ops.wkv5(**x64, output_final_state=True, backend="reference")
    (y64.sum() + s64.sum()).backward()
    assert x["w"].grad.shape == (2, 16)
    for n in x:
        assert rel(x[n].grad, x64[n].grad) < 1e-5, n


def test_wkv6_entry_points_reject_bad_outputs_to_add(emulated):
    x = {n: t.float().contiguous() for n, t in make_inputs("wkv6", 1, 20, 2, 16, state=True).items()}
    args = [x[n] for n in ("r", "k", "v", "w", "u", "state")]
    with pytest.raises(RuntimeError, match=r"add\[0\] must have shape"):
        emulated.wkv6_forward(*args, False, 0, False, False, [torch.zeros(1, 20, 2, 8)])
    with pytest.raises(RuntimeError, match="add takes none or 3 tensors"):
        y, sT, snap, trans = emulated.wkv6_forward(*args, True)
        emulated.wkv6_backward(*args[:5], snap, trans, y, sT, 0, False, False, [y])
    with pytest.raises(RuntimeError, match=r"w must be \[B, T, H, K\] like r, or \[H, K\]"):
        emulated.wkv6_forward(*args[:3], args[3][:, :1], *args[4:], False)


@pytest.mark.parametrize("op", ["wkv4", "bi_wkv4"])
def test_per_channel_chunks(emulated, op):
    """chunk > 0 splits the scans (the forward returns the state entering each chunk from each
    side, which the backward of the same chunking needs) and gives the one-chunk results."""
    x = make_inputs(op, 2, 150, 1, 8, state=True, seed=5)
    args = [x[n].float().contiguous() for n in ("k", "v", "w", "u", "state")]
    fwd = getattr(emulated, op + "_forward")
    one, chunked = fwd(*args, 0), fwd(*args, 16)
    D = 2 if op == "bi_wkv4" else 1
    assert tuple(one[2].shape) == (2, 1, D, 3, 8)
    assert tuple(chunked[2].shape) == (2, 10, D, 3, 8)  # 150 tokens: 10 chunks of 16
    assert torch.equal(one[2][:, 0, 0], args[-1].view(2, D, 3, 8)[:, 0])  # what enters chunk 0
    for a, b in zip(one[:2], chunked[:2]):
        assert rel(b, a) < 1e-6
    gy = torch.ones_like(args[0])
    with pytest.raises(RuntimeError, match="do not match this chunk length"):
        getattr(emulated, op + "_backward")(*args[:4], chunked[2], chunked[1], gy,
                                            torch.zeros_like(args[-1]), 0)


@pytest.mark.parametrize("op", PER_CHANNEL)
@pytest.mark.parametrize("chunk", [0, 8, 37])
def test_per_channel_extreme_inputs(on_emulated_cuda, monkeypatch, op, chunk):
    """Decays down to e^-150 per step and keys of +-100 (every exponential far outside float32):
    the log-scaled states, their chunk sums and the gradient scans stay exact."""
    monkeypatch.setenv(cuda_backend.CHUNK_ENV, str(chunk))
    x = make_inputs(op, 2, 150, 1, 16, state=True, seed=3, strong_decay=True)
    x["k"] = x["k"] * 20
    x = {n: t.float() for n, t in x.items()}
    x64 = {n: t.double().requires_grad_() for n, t in x.items()}
    y64, s64 = getattr(ops, op)(**x64, output_final_state=True, backend="reference")
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(y64.shape, generator=g, dtype=torch.float64).float().double()
    gs = torch.randn(s64.shape, generator=g, dtype=torch.float64).float().double()
    gs.select(-2, 2).mul_(0.1)
    want = torch.autograd.grad([y64, s64], list(x64.values()), [gy, gs])
    xf = {n: t.requires_grad_() for n, t in x.items()}
    y, s = getattr(ops, op)(**xf, output_final_state=True)
    got = torch.autograd.grad([y, s], list(xf.values()), [gy.float(), gs.float()])
    errs = {"y": rel(y, y64), "state": rel(canon(s, s64), canon(s64, s64))}
    errs.update({"d" + n: rel(a, b) for n, a, b in zip(x, got, want)})
    bad = {k: f"{e:.2e}" for k, e in errs.items() if not e <= 1e-5}
    assert not bad, bad


def test_chunk_length_choice(monkeypatch):
    monkeypatch.delenv(cuda_backend.CHUNK_ENV, raising=False)
    assert cuda_backend.chunk_length(1, 32, 16384, "cpu") == 0  # not a GPU: sequential
    monkeypatch.setattr(cuda_backend, "_sm_count", lambda device: 132)
    assert cuda_backend.chunk_length(8, 32, 4096, "cuda") == 0  # 256 blocks: about one wave
    L = cuda_backend.chunk_length(1, 32, 16384, "cuda")  # 32 blocks: chunks for ~3 per SM
    assert L % 64 == 0 and 2 * 132 < 32 * -(-16384 // L) <= 3 * 132
    # 16-bit activations and decay: fewer registers, 4 blocks per SM (H200: 1024 beat 1408)
    assert cuda_backend.chunk_length(1, 32, 16384, "cuda", narrow=True) == 1024
    assert cuda_backend.chunk_length(1, 32, 300, "cuda") == 0  # too short for 3 chunks
    # bi_wkv6's two scans: at once in the forward, one after the other in the backward
    assert not cuda_backend.halves_concurrent(False, "cpu")
    assert cuda_backend.halves_concurrent(False, "cuda")
    assert not cuda_backend.halves_concurrent(True, "cuda")
    # per-channel ops: ~4096 threads per SM over (batch, chunk, channel), chunks of >= 64
    # tokens, or up to 6 of >= 32 in a short sequence
    assert cuda_backend.v4_chunk_length(1, 192, 16384, "cpu") == 0
    assert cuda_backend.v4_chunk_length(1, 192, 16384, "cuda") == 64
    assert cuda_backend.v4_chunk_length(4, 768, 4096, "cuda") == 64
    assert cuda_backend.v4_chunk_length(64, 192, 196, "cuda") == 33  # 6 chunks
    assert cuda_backend.v4_chunk_length(1, 192, 100, "cuda") == 34  # 3 chunks
    assert cuda_backend.v4_chunk_length(1, 192, 60, "cuda") == 0  # one
    assert cuda_backend.v4_chunk_length(256, 4096, 4096, "cuda") == 0  # 1M threads already
    assert cuda_backend.v4_chunk_length(512, 4096, 1024, "cuda") == 0  # the GPU is full already
    assert cuda_backend.v4_chunk_length(1, 192, 40, "cuda") == 0  # too short for two chunks
    monkeypatch.setenv(cuda_backend.CHUNK_ENV, "256")
    assert cuda_backend.chunk_length(8, 32, 4096, "cuda") == 256
    assert cuda_backend.v4_chunk_length(64, 192, 196, "cuda") == 256
    monkeypatch.setenv(cuda_backend.CHUNK_ENV, "-1")
    with pytest.raises(ValueError, match="RWKV_HF_CUDA_CHUNK"):
        cuda_backend.chunk_length(1, 1, 100, "cuda")


# ---------------------------------------------------------------------------- farthest point sampling

# (B, N, n, dtype): fewer points than the 256 threads of small clouds, n = N, the 1024-thread
# kernel of large clouds (N > 2048), n = 1 (no step), a cloud of 4 points.
FPS_CASES = [(3, 100, 40, torch.float32), (2, 300, 300, torch.float64), (1, 2100, 30, torch.float32),
             (2, 513, 1, torch.float32), (1, 4, 4, torch.float64)]


@pytest.mark.parametrize("B,N,n,dtype", FPS_CASES, ids=[f"B{c[0]}-N{c[1]}-n{c[2]}-{str(c[3])[6:]}" for c in FPS_CASES])
def test_fps_kernel_picks_the_torch_forms_points(on_emulated_cuda, B, N, n, dtype):
    """The sampling kernel (one block per cloud, the (distance, index) maximum reduced over
    shuffles and warps) picks the torch form's points, bit for bit."""
    points = make_clouds(B, N, seed=N + n, dtype=dtype)
    want = ops.farthest_point_sample(points, n, backend="torch")
    assert torch.equal(ops.farthest_point_sample(points, n), want)


def test_fps_kernel_ties_and_roundings(on_emulated_cuda):
    """Ties go to the first index across threads and warps too (a grid: exact integer distances,
    in two orders), and the distance is rounded as the torch form rounds it (rounding_ties: the
    kernel's __fmul_rn / __fadd_rn; on a GPU nvcc would otherwise contract them)."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(7.0)] * 3, indexing="ij"), -1).reshape(1, -1, 3)
    grid = torch.cat([grid, grid.flip(1)])  # 343 points: threads hold one or two each
    assert torch.equal(ops.farthest_point_sample(grid, 80), ops.farthest_point_sample(grid, 80, backend="torch"))
    points = rounding_ties(64)
    assert ops.farthest_point_sample(points, 2)[:, 1].eq(1).all()


def test_fps_entry_point_rejects_bad_input(emulated):
    points = torch.randn(2, 10, 3)
    assert emulated.farthest_point_sample(torch.empty(0, 10, 3), 3).shape == (0, 3)
    for n in (0, 11):
        with pytest.raises(RuntimeError, match=r"n must be in \[1, N = 10\]"):
            emulated.farthest_point_sample(points, n)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        emulated.farthest_point_sample(points.half(), 3)
    with pytest.raises(RuntimeError, match=r"must be \[B, N, 3\]"):
        emulated.farthest_point_sample(points[..., :2].contiguous(), 3)
    with pytest.raises(RuntimeError, match="contiguous"):
        emulated.farthest_point_sample(points.transpose(0, 1), 3)


# ---------------------------------------------------------------------------- point_wkv's scans

def point_scan64(k, v, w, state):
    """What cuda_backend.point_scan computes, as token loops (in the inputs' dtype: float64 here)
    -> (A [2, B, T, H, K], final states [B, 2, H, K, K])."""
    def scan(ks, vs, ws, S):
        out = []
        for kt, vt, wt in zip(ks, vs, ws):
            out.append((S @ kt[..., None]).squeeze(-1))  # the state before the token, times k
            S = torch.exp(wt)[..., None] * S + kt[..., :, None] * vt[..., None, :]
        return torch.stack(out, 1), S

    ks, vs, ws = k.unbind(1), v.unbind(1), w.unbind(1)
    a_f, s_f = scan(ks, vs, ws, state[:, 0])
    a_b, s_b = scan(ks[::-1], vs[::-1], ws[::-1], state[:, 1])
    return torch.stack([a_f, a_b.flip(1)]), torch.stack([s_f, s_b], 1)


# (B, T, H, N, dtype, with an initial state): T = 1, 17 (a partial stage), 64 (a snapshot chunk
# ending at T), 130 (three chunks, the last partial); every head size (48: PointRWKV as released,
# in 6 warps of 8 rows, 96); float16 with its decay.
POINT_CASES = [(2, 1, 2, 16, torch.float32, True), (2, 17, 2, 16, torch.float32, True),
               (2, 17, 2, 16, torch.float32, False), (1, 130, 2, 16, torch.float32, True),
               (1, 130, 2, 32, torch.float32, False), (2, 130, 1, 16, torch.bfloat16, True),
               (1, 64, 1, 32, torch.bfloat16, False), (1, 70, 1, 64, torch.float32, True),
               (1, 70, 1, 64, torch.bfloat16, True), (1, 20, 1, 128, torch.float32, True),
               (1, 70, 1, 48, torch.float32, True), (1, 18, 1, 96, torch.bfloat16, False),
               (1, 33, 2, 16, torch.float16, True)]


@pytest.mark.parametrize("B,T,H,N,dtype,with_state", POINT_CASES,
                         ids=[f"B{c[0]}-T{c[1]}-H{c[2]}-N{c[3]}-{str(c[4])[6:]}" + ("-state" if c[5] else "")
                              for c in POINT_CASES])
def test_point_scan_matches_float64_reference(on_emulated_cuda, B, T, H, N, dtype, with_state):
    """PointRWKV's two scans (cuda_backend.point_scan: A of each direction and the final
    states) against float64 token loops, and every gradient (k, v, w, the initial states) against
    their autograd, from a random gradient of A and of the final states; the loops' sum of the
    directions against the reference backend's point_wkv (r = 1, u = 0). k, v and w in the
    dtype (w read as it is), the states float32; gradients in each input's dtype."""
    x16 = make_inputs("point_wkv", B, T, H, N, dtype=torch.bfloat16, state=True, seed=T + 7 * N + B)
    names = ["k", "v", "w"] + (["state"] if with_state else [])
    x64 = {n: x16[n].double().requires_grad_() for n in ("k", "v", "w", "state")}
    if not with_state:
        x64["state"] = torch.zeros_like(x64["state"])
    A64, s64 = point_scan64(**x64)
    y64, s_ref = ops.point_wkv(torch.ones_like(x64["k"]), x64["k"], x64["v"], x64["w"],
                               torch.zeros(H, N, dtype=torch.float64), x64["state"],
                               output_final_state=True, backend="reference")
    assert rel(A64[0] + A64[1], y64) < 1e-12 and rel(s64, s_ref) < 1e-12
    g = torch.Generator().manual_seed(T)
    gA = torch.randn(A64.shape, generator=g, dtype=torch.float64).float().double()
    gs = torch.randn(s64.shape, generator=g, dtype=torch.float64).float().double()
    want = torch.autograd.grad([A64, s64], [x64[n] for n in names], [gA, gs])

    x = {n: (x16[n].float() if n == "state" else x16[n].to(dtype)).requires_grad_() for n in names}
    A, s = cuda_backend.point_scan(x["k"], x["v"], x["w"], x.get("state"))
    got = torch.autograd.grad([A, s], [x[n] for n in names], [gA.float(), gs.float()])

    assert A.dtype == s.dtype == torch.float32 and A.shape == (2, B, T, H, N) and s.shape == (B, 2, H, N, N)
    errs = {"A": rel(A, A64), "state": rel(s, s64)}
    for n, a, b in zip(names, got, want):
        assert a.dtype == x[n].dtype, n
        errs["d" + n] = rel(a, b)
    # A, the states and the initial states' gradient are float32 whatever the dtype: 1e-5; the
    # gradients of k, v, w are rounded to their dtype
    tol = {k: 1e-5 if k in ("A", "state", "dstate") else TOL[dtype] for k in errs}
    bad = {k: f"{e:.2e} > {tol[k]:g}" for k, e in errs.items() if not e <= tol[k]}
    assert not bad, f"relative errors: {bad}"


def test_point_scan_decay_dtype_and_outputs_off_the_loss(on_emulated_cuda, monkeypatch):
    """point_scan reads a bfloat16 w as it is (the same A, states and gradients, bit for bit, as
    the same w in float32; w's gradient comes back in bfloat16, the float32 one rounded once);
    an output off the loss is a zero gradient without a tensor (A's or the final states', an
    empty tensor to the extension: the same gradients as explicit zeros); without gradients the
    forward keeps no snapshots."""
    x16 = make_inputs("point_wkv", 2, 130, 2, 16, dtype=torch.bfloat16, state=True, seed=31)
    names = ["k", "v", "w", "state"]
    seen = []

    def record(name, args):
        seen.append((name, args[2].dtype, *(a.numel() for a in args[3:] if isinstance(a, torch.Tensor))))

    monkeypatch.setattr(cuda_backend, "_ext", spy_on(on_emulated_cuda, record))
    g = torch.Generator().manual_seed(32)
    gA = torch.randn(2, 2, 130, 2, 16, generator=g)
    gs = torch.randn(2, 2, 2, 16, 16, generator=g)
    out = {}
    for w_dtype in (torch.bfloat16, torch.float32):
        x = {n: (x16[n].to(w_dtype) if n == "w" else x16[n]).detach().requires_grad_() for n in names}
        A, s = cuda_backend.point_scan(*(x[n] for n in names))
        out[w_dtype] = (A, s, torch.autograd.grad([A, s], [x[n] for n in names], [gA, gs]))
    n_state, n_snap = 2 * 2 * 2 * 16 * 16, 2 * 2 * 2 * 3 * 16 * 16
    assert seen == [("point_forward", torch.bfloat16, n_state), ("point_backward", torch.bfloat16, n_snap, gA.numel(), n_state),
                    ("point_forward", torch.float32, n_state), ("point_backward", torch.float32, n_snap, gA.numel(), n_state)]
    (A1, s1, g1), (A2, s2, g2) = out[torch.bfloat16], out[torch.float32]
    assert torch.equal(A1, A2) and torch.equal(s1, s2)
    for n, a, b in zip(names, g1, g2):
        assert a.dtype == x16[n].dtype if n != "w" else a.dtype == torch.bfloat16, n
        assert torch.equal(a, b.to(a.dtype)), n
    # Outputs off the loss: empty gradients to the extension, the results of explicit zeros.
    x = {n: x16[n].detach().requires_grad_() for n in names}
    A, s = cuda_backend.point_scan(*(x[n] for n in names))
    for used, upstream in (([A], [gA]), ([s], [gs])):
        seen.clear()
        off = torch.autograd.grad(used, [x[n] for n in names], upstream, retain_graph=True)
        zeros = torch.autograd.grad([A, s], [x[n] for n in names],
                                    [gA if used[0] is A else torch.zeros_like(A),
                                     gs if used[0] is s else torch.zeros_like(s)], retain_graph=True)
        assert seen[0][3:] == ((gA.numel(), 0) if used[0] is A else (0, n_state))
        for n, a, b in zip(names, off, zeros):
            assert torch.equal(a, b), n
    # No gradients: the forward keeps nothing (save=False), the same A and states.
    seen.clear()
    with torch.no_grad():
        A0, s0 = cuda_backend.point_scan(*(x16[n] for n in names))
    assert [c[0] for c in seen] == ["point_forward"] and torch.equal(A0, A) and torch.equal(s0, s)


def test_point_scan_compiles_through_its_operators(on_emulated_cuda):
    """torch.compile(fullgraph=True) traces point_scan's forward and backward through its
    operators (rwkv_hf::cuda__point_*) in one graph, and gives eager mode's loss and gradients."""
    x = make_inputs("point_wkv", 2, 70, 2, 16, state=True, seed=61)

    def loss(k, v, w, state):
        A, s = cuda_backend.point_scan(k, v, w, state)
        return (A * A).sum() + s.sum()

    results = []
    for f in (loss, torch.compile(loss, fullgraph=True, backend="aot_eager")):
        torch._dynamo.reset()
        leaves = [x[n].detach().requires_grad_() for n in ("k", "v", "w", "state")]
        value = f(*leaves)
        results.append((value.detach(), torch.autograd.grad(value, leaves)))
    (la, ga), (lb, gb) = results
    assert rel(lb, la) < 1e-6 and all(rel(b, a) < 1e-6 for a, b in zip(ga, gb))


def test_point_entry_points_reject_bad_input(emulated):
    x = {n: t.float().contiguous() for n, t in make_inputs("point_wkv", 1, 70, 2, 16, state=True).items()}
    k, v, w, state = x["k"], x["v"], x["w"], x["state"]
    A, sT, snap = emulated.point_forward(k, v, w, state, True)
    assert snap.shape == (2, 1, 2, 2, 16, 16)  # [2, B, H, T / 64 rounded up, N, N]
    assert emulated.point_forward(k, v, w, state, False)[2].numel() == 0
    with pytest.raises(RuntimeError, match="head size must be 16, 32, 48, 64, 96 or 128"):
        bad = make_inputs("point_wkv", 1, 4, 2, 24, state=True)
        emulated.point_forward(*(bad[n].float() for n in ("k", "v", "w", "state")), False)
    with pytest.raises(RuntimeError, match="must have dtype"):
        emulated.point_forward(k, v.double(), w, state, False)
    with pytest.raises(RuntimeError, match="w must be float32 or the activations' dtype"):
        emulated.point_forward(k.bfloat16(), v.bfloat16(), w.half(), state, False)
    with pytest.raises(RuntimeError, match=r"state must be \[B, 2, H, K, K\]"):
        emulated.point_forward(k, v, w, state[:, 0].contiguous(), False)
    with pytest.raises(RuntimeError, match="snapshots do not match"):
        emulated.point_backward(k, v, w, snap[:, :, :, :1].contiguous(), A, sT)
    with pytest.raises(RuntimeError, match=r"gA must be \[2, B, T, H, K\]"):
        emulated.point_backward(k, v, w, snap, A[0].contiguous(), sT)
    with pytest.raises(ValueError, match="head sizes K = V"):
        cuda_backend._head_size("point_wkv", torch.zeros(1, 4, 2, 24), torch.zeros(1, 4, 2, 24))


def test_point_wkv_unsupported_reason():
    """The dispatcher hears why the extension cannot run a point_wkv call: CPU tensors, float64,
    a head size without a kernel."""
    class OnCuda(torch.Tensor):  # what unsupported_reason reads of a CUDA tensor, on the CPU
        is_cuda = property(lambda self: True)

    def args(N, dtype=torch.float32, cuda=True):
        x = make_inputs("point_wkv", 1, 4, 2, N, dtype=dtype)
        return {n: t.as_subclass(OnCuda) if cuda else t for n, t in x.items()}

    assert cuda_backend.unsupported_reason("point_wkv", **args(64)) is None
    assert cuda_backend.unsupported_reason("point_wkv", **args(64, torch.bfloat16)) is None
    assert cuda_backend.unsupported_reason("point_wkv", **args(48)) is None  # PointRWKV as released
    assert "K=48" in cuda_backend.unsupported_reason("wkv6", **args(48))
    assert "needs CUDA tensors" in cuda_backend.unsupported_reason("point_wkv", **args(64, cuda=False))
    assert "float64" in cuda_backend.unsupported_reason("point_wkv", **args(64, torch.float64))
    assert "K=24" in cuda_backend.unsupported_reason("point_wkv", **args(24))


# Each case: (model, run), run() -> (loss, the model's main output).

def _fill_zero_matrices(model):
    with torch.no_grad():  # the inits zero some projections; give every weight a value
        for p in model.parameters():
            if p.dim() == 2 and not p.any():
                p.normal_(0, 0.02)
    return model.eval()


def _lm_case(version):
    from rwkv_hf.lm import RWKV_LM_CLASSES

    config_cls, _, causal_cls, _ = RWKV_LM_CLASSES[version]
    torch.manual_seed(version)
    model = _fill_zero_matrices(causal_cls(config_cls(vocab_size=100, hidden_size=64, num_hidden_layers=2)))
    ids = torch.randint(1, 100, (2, 40), generator=torch.Generator().manual_seed(0))
    return model, lambda: (lambda out: (out.loss, out.logits))(model(ids, labels=ids, use_cache=False))


def _vision_case(version):
    from rwkv_hf.vision import VRWKV_CLASSES

    config_cls, _, classifier_cls, _ = VRWKV_CLASSES[version]
    torch.manual_seed(version)
    model = classifier_cls(config_cls(hidden_size=128 if version == 6 else 32, num_hidden_layers=2,
                                      image_size=32, patch_size=8, num_labels=3)).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return model, lambda: (lambda out: (out.loss, out.logits))(model(pixel_values=x, labels=torch.tensor([0, 2])))


def _restore_case():
    from rwkv_hf.restore import RestoreRwkvConfig, RestoreRwkvForImageRestoration

    torch.manual_seed(0)
    model = _fill_zero_matrices(RestoreRwkvForImageRestoration(
        RestoreRwkvConfig(hidden_size=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)))
    g = torch.Generator().manual_seed(0)
    x, clean = torch.rand(2, 1, 19, 21, generator=g), torch.rand(2, 1, 19, 21, generator=g)  # padded inside
    return model, lambda: (lambda out: (out.loss, out.reconstruction))(model(pixel_values=x, labels=clean))


def _clip_case():
    from rwkv_hf.clip import RwkvClipConfig, RwkvClipModel

    torch.manual_seed(0)
    model = _fill_zero_matrices(RwkvClipModel(RwkvClipConfig(
        vision_config=dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, head_size=32),
        text_config=dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                         head_size=32))))
    g = torch.Generator().manual_seed(0)
    ids, x = torch.randint(1, 100, (2, 12), generator=g), torch.randn(2, 3, 32, 32, generator=g)
    return model, lambda: (lambda out: (out.loss, out.logits_per_image))(
        model(input_ids=ids, pixel_values=x, return_loss=True))


def _point_case():  # one head of 48: PointRWKV's released head size
    from rwkv_hf.point import PointRwkvConfig, PointRwkvForPointCloudClassification

    torch.manual_seed(0)
    model = PointRwkvForPointCloudClassification(PointRwkvConfig(
        hidden_size=48, depths=[1, 1], num_heads=1, num_groups=[24, 12], group_sizes=[6, 6], k_neighbors=[4, 4],
        graph_iterations=1, num_labels=5)).eval()
    with torch.no_grad():  # u and the decay's parameters start at zero
        for name, p in model.named_parameters():
            if name.endswith(("spatial_mixing.u", "decay_A", "decay_B", "decay_base")):
                p.normal_(0, 0.5)
    points = torch.randn(2, 60, 3, generator=torch.Generator().manual_seed(0))
    return model, lambda: (lambda out: (out.loss, out.logits))(model(points=points, labels=torch.tensor([1, 3])))


_MODEL_CASES = {**{f"lm{v}": lambda v=v: _lm_case(v) for v in (4, 5, 6, 7)},
                **{f"vision{v}": lambda v=v: _vision_case(v) for v in (4, 6)},
                "restore": _restore_case, "clip": _clip_case, "point": _point_case}


@pytest.mark.parametrize("family", list(_MODEL_CASES))
def test_models_through_the_extension_match_the_torch_backend(on_emulated_cuda, monkeypatch, family):
    """Every model family in the repository runs end to end through the extension's kernels
    (here emulated; on a GPU: gpu_check.py's models section) and matches the torch backend:
    logits and every parameter's gradient (the per-channel ops of RWKV-4 and Vision-RWKV v4
    in 16-token chunks)."""
    monkeypatch.setenv(cuda_backend.CHUNK_ENV, "16")
    calls = []

    class Counting:  # the emulated module, counting the kernel entry points reached
        def __getattr__(self, name):
            calls.append(name)
            return getattr(on_emulated_cuda, name)

    monkeypatch.setattr(cuda_backend, "_ext", Counting())
    model, run = _MODEL_CASES[family]()
    results = {}
    for backend in ("cuda", "torch"):
        monkeypatch.setattr(ops, "_choose", lambda op, requested, tensors, b=backend: b)
        model.zero_grad(set_to_none=True)
        loss, out = run()
        loss.backward()
        results[backend] = (out.detach(), {n: p.grad for n, p in model.named_parameters()})
    (la, ga), (lb, gb) = results["cuda"], results["torch"]
    assert {n for n in calls if n.endswith("_forward")} and {n for n in calls if n.endswith("_backward")}
    assert rel(la, lb) < 1e-4
    bad = {n: rel(ga[n], gb[n]) for n in gb if gb[n] is not None and not rel(ga[n], gb[n]) < 1e-3}
    assert not bad and all(ga[n] is not None for n in gb if gb[n] is not None), bad


# ---------------------------------------------------------------------------- torch.compile

def _cuda_op_samples(chunk):
    """(operator, arguments) for every operator the cuda backend registers; the backward
    operators get their forward's records."""
    c = cuda_backend
    T = 150
    x4, x4b = (make_inputs(op, 2, T, 2, 8, state=True, seed=i) for i, op in enumerate(PER_CHANNEL))
    x5, x6, xb = (make_inputs(op, 2, T, 2, 16, state=True, seed=3 + i) for i, op in
                  enumerate(("wkv5", "wkv6", "bi_wkv6")))
    x7 = make_inputs("wkv7", 2, T, 2, 16, state=True, seed=6)
    a4, a4b = list(x4.values()), list(x4b.values())
    a5, a6, ab = ([x[n] for n in ("r", "k", "v", "w", "u", "state")] for x in (x5, x6, xb))
    a7 = [x7[n] for n in ("r", "k", "v", "w", "a", "b", "state")]
    gy4, gy = torch.randn(2, T, 16), torch.randn(2, T, 2, 16)
    gS = torch.randn(2, 2, 16, 16)
    samples = []
    for a, bi in ((a4, False), (a4b, True)):
        y, sT, enter = c._v4_forward(*a, chunk, bi)
        samples += [(c._v4_forward_op, (*a, chunk, bi)),
                    (c._v4_backward_op, (*a[:4], enter, sT, gy4, torch.randn(sT.shape), chunk, bi))]
    for a in (a5, a6):
        _, _, snap, trans = c._wkv6_forward(*a, True, chunk)
        samples += [(c._wkv6_forward_op, (*a, True, chunk)),
                    (c._wkv6_backward_op, (*a[:5], snap, trans, gy, gS, chunk))]
    saved = c._bi_wkv6_forward(*ab, True, chunk)[2:]
    samples += [(c._bi_wkv6_forward_op, (*ab, True, chunk)),
                (c._bi_wkv6_backward_op, (*ab[:5], *saved, gy, torch.randn(2, 2, 2, 16, 16), chunk))]
    saved = c._wkv7_forward(*a7, True, chunk)[2:]
    samples += [(c._wkv7_forward_op, (*a7, True, chunk)),
                (c._wkv7_backward_op, (*a7[:6], *saved, gy, gS, chunk)),
                (c._wkv7_forward_op, (*a7, False, chunk))]  # inference: nothing kept
    xp = make_inputs("point_wkv", 2, T, 2, 16, state=True, seed=7)
    ap = [xp[n] for n in ("k", "v", "w", "state")]
    gA, gSp = torch.randn(2, 2, T, 2, 16), torch.randn(2, 2, 2, 16, 16)
    snap_p = c._point_forward(*ap, True)[2]
    samples += [(c._point_forward_op, (*ap, True)), (c._point_forward_op, (*ap, False)),
                (c._point_backward_op, (*ap[:3], snap_p, gA, gSp))]
    samples += [(c._fps_op, (torch.randn(2, 90, 3), 30)), (c._fps_op, (torch.randn(1, 40, 3).double(), 40))]
    # no initial state, and a final state off the loss: empty tensors (zero)
    none = torch.empty(0)
    samples += [(c._wkv6_forward_op, (*a6[:5], none, True, chunk)),
                (c._wkv6_backward_op, (*a6[:5], snap, trans, gy, none, chunk)),
                (c._bi_wkv6_forward_op, (*ab[:5], none, False, chunk)),
                (c._bi_wkv6_backward_op, (*ab[:5], *c._bi_wkv6_forward(*ab, True, chunk)[2:], gy, none, chunk)),
                (c._wkv7_forward_op, (*a7[:6], none, False, chunk)),
                (c._wkv7_backward_op, (*a7[:6], *saved, gy, none, chunk)),
                (c._point_forward_op, (*ap[:3], none, True)),
                (c._point_backward_op, (*ap[:3], snap_p, none, none))]
    return samples


@pytest.mark.parametrize("chunk", [0, 64], ids=["sequential", "chunked"])
def test_extension_operators_pass_opcheck(on_emulated_cuda, chunk):
    """Every operator wrapping the extension (rwkv_hf::cuda_*), run on its emulation, passes
    torch.library.opcheck: schema, the fake implementation against the real outputs (shapes,
    dtypes, strides: what the host code allocates, chunk transitions included) and tracing
    with dynamic shapes. (Their gradients are the autograd Functions', tested through
    torch.compile below.)"""
    for op, args in _cuda_op_samples(chunk):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("family", ["lm4", "lm7", "vision6"])
def test_models_compile_through_the_extension(on_emulated_cuda, monkeypatch, family):
    """torch.compile(fullgraph=True) traces a training step through the extension's operators
    (emulated here) in one graph, RWKV-4's per-channel op included, and gives eager mode's loss
    and gradients."""
    monkeypatch.setenv(cuda_backend.CHUNK_ENV, "64")
    model, run = _MODEL_CASES[family]()
    model.train()
    results = []
    for step in (lambda: run()[0], torch.compile(lambda: run()[0], fullgraph=True, backend="aot_eager")):
        torch._dynamo.reset()
        model.zero_grad(set_to_none=True)
        loss = step()
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (la, ga), (lb, gb) = results
    assert rel(lb, la) < 1e-5 and ga.keys() == gb.keys()
    bad = {n: rel(gb[n], ga[n]) for n in ga if not rel(gb[n], ga[n]) < 1e-4}
    assert not bad, bad
