"""torch.compile through the operator layer and the models, on the CPU.

The compiled kernels are registered as torch.library custom operators with shape-only
("fake") implementations, which the ops' autograd Functions call while torch.compile traces,
so it traces the ops, and the models, in one graph (``fullgraph=True`` raises at any graph
break), forward and backward, with the same results as eager mode. Most tests use the
``aot_eager`` backend (the
whole trace: dynamo, fake tensors, the autograd graph; no code generation); one runs
inductor. torch.export of every family for inference, too. The CUDA extension's operators get
the same checks on its emulation (tests/test_cuda_emulated.py).
"""
import pytest
import torch
import torch._dynamo.testing

from lm_utils import rel_err, tiny_model
from rwkv_hf import ops
from rwkv_hf.ops import cpu_backend, custom_ops
from rwkv_hf.ops.random_inputs import make_inputs

OPS = ("wkv4", "bi_wkv4", "wkv5", "wkv6", "bi_wkv6", "wkv7")


def compiled(fn, backend="aot_eager", fullgraph=True):
    torch._dynamo.reset()  # a fresh trace: no graph cached by an earlier test
    return torch.compile(fn, fullgraph=fullgraph, backend=backend)


def forward(op, inputs):
    """y, final state and a loss that weighs every output element differently."""
    y, s = getattr(ops, op)(**inputs, output_final_state=True)
    return y, s, (y * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum() + (s * s).sum() * 0.1


def run_op(fn, op, x, grad):
    """y, final state and (with ``grad``) the gradients of every input, ``fn`` the forward
    (compiled or not; the backward is autograd's, through the compiled graph's own)."""
    inputs = {n: t.detach().clone().requires_grad_(grad) for n, t in x.items()}
    y, s, loss = fn(op, inputs)
    return (y, s, *torch.autograd.grad(loss, list(inputs.values()))) if grad else (y, s)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("op", OPS)
def test_every_op_compiles_in_one_graph_and_matches_eager(op, grad):
    """One graph, the eager results."""
    x = make_inputs(op, B=2, T=70, H=2, N=16, state=True, seed=3)
    want = run_op(forward, op, x, grad)
    got = run_op(compiled(forward), op, x, grad)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert rel_err(a, b) < 1e-6


@pytest.mark.parametrize("op", OPS)
def test_the_torch_backend_compiles_around_its_ops(monkeypatch, op):
    """The torch backend (the fallback) branches on the decays' values, so it is not traced in
    one graph; the default mode compiles around its ops, to eager mode's results, gradients
    too."""
    monkeypatch.setenv(ops.BACKEND_ENV, "torch")
    x = make_inputs(op, B=2, T=70, H=2, N=16, state=True, seed=3)
    want = run_op(forward, op, x, True)
    got = run_op(compiled(forward, fullgraph=False), op, x, True)
    for a, b in zip(got, want, strict=True):
        assert rel_err(a, b) < 1e-6


@pytest.mark.parametrize("op", ["wkv7", "bi_wkv4"])
def test_compiled_ops_run_the_registered_kernels(monkeypatch, op):
    """What the compiled graph calls: the cpu backend's operators (not a traced-through
    fallback), counted at the kernels' C entry points."""
    calls = []
    real = cpu_backend._call
    monkeypatch.setattr(cpu_backend, "_call", lambda name, *a: calls.append(name) or real(name, *a))
    x = make_inputs(op, B=1, T=20, H=2, N=16, state=True)
    run_op(compiled(forward), op, x, True)
    assert calls == [op + "_forward", op + "_backward"]


def _cpu_op_samples():
    """(operator, arguments) for every operator the cpu backend registers."""
    c = cpu_backend
    x6 = make_inputs("wkv6", B=2, T=70, H=2, N=16, state=True, seed=1)
    x7 = make_inputs("wkv7", B=2, T=70, H=2, N=16, state=True, seed=2)
    x4 = make_inputs("wkv4", B=2, T=33, H=2, N=8, state=True, seed=3)
    x4b = make_inputs("bi_wkv4", B=2, T=33, H=2, N=8, state=True, seed=4)
    a6 = [x6[n] for n in ("r", "k", "v", "w", "u", "state")]
    a7 = [x7[n] for n in ("r", "k", "v", "w", "a", "b", "state")]
    _, _, snaps6 = c._wkv6_forward(*a6, False, True)
    _, _, snaps7 = c._wkv7_forward(*a7, True)
    gy, gS = torch.randn(2, 70, 2, 16), torch.randn(2, 2, 16, 16)
    gy4, gS4, gS4b = torch.randn(2, 33, 16), torch.randn(2, 3, 16), torch.randn(2, 2, 3, 16)
    return [
        (c._wkv6_forward_op, (*a6, False, True)),
        (c._wkv6_forward_op, (*a6[:4], None, a6[5], True, False)),
        (c._wkv6_backward_op, (*a6[:5], snaps6, gy, gS, False)),
        (c._wkv7_forward_op, (*a7, True)),
        (c._wkv7_backward_op, (*a7[:6], snaps7, gy, gS)),
        (c._wkv4_forward_op, (*x4.values(), False)),
        (c._wkv4_forward_op, (*x4b.values(), True)),
        (c._wkv4_backward_op, (*x4.values(), gy4, gS4, False)),
        (c._wkv4_backward_op, (*x4b.values(), gy4, gS4b, True)),
        (c._fps_op, (torch.randn(2, 50, 3), 20)),
        (c._fps_op, (torch.randn(1, 30, 3, dtype=torch.float64), 30)),
    ]


@pytest.mark.parametrize("i", range(11))
def test_cpu_operators_pass_opcheck(i):
    """torch.library.opcheck: the schema, the fake implementation against the real one (shapes,
    dtypes, strides) and tracing with dynamic shapes. (Their gradients are the autograd
    Functions', tested above through torch.compile.)"""
    op, args = _cpu_op_samples()[i]
    torch.library.opcheck(op, args)


def test_a_backward_without_the_forwards_snapshots_is_refused():
    x = make_inputs("wkv7", B=1, T=70, H=2, N=16, state=True)
    args = [x[n] for n in ("r", "k", "v", "w", "a", "b")]
    _, _, none_kept = cpu_backend._wkv7_forward(*args, x["state"], False)
    with pytest.raises(ValueError, match="save=True"):
        cpu_backend._wkv7_backward_op(*args, none_kept, torch.randn(1, 70, 2, 16), torch.randn(1, 2, 16, 16))


def test_operators_live_in_the_package_namespace_and_a_refused_definition_falls_back(monkeypatch):
    assert custom_ops.NAMESPACE == "rwkv_hf"
    assert torch.ops.rwkv_hf.cpu_wkv7_forward.default is not None
    assert torch.ops.rwkv_hf.cuda_wkv7_backward.default is not None

    def refuse(*args, **kwargs):  # as a torch that will not define an operator twice
        raise RuntimeError("already defined")

    monkeypatch.setattr(torch.library, "custom_op", refuse)
    impl = cpu_backend._wkv7_forward
    op = custom_ops.register("cpu", impl, lambda *a: None)
    assert op is None and custom_ops.traced(op, impl) is impl  # the kernel is called directly


def _lm(version):
    model = tiny_model(version).train()
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(version))
    return model, lambda: model(input_ids=ids, labels=ids, use_cache=False).loss


def _vision(version):
    from rwkv_hf.vision import VRWKV_CLASSES

    config_cls, _, classifier_cls, _ = VRWKV_CLASSES[version]
    torch.manual_seed(version)
    model = classifier_cls(config_cls(hidden_size=64, num_hidden_layers=2, image_size=32, patch_size=8,
                                      num_labels=3, **({"head_size": 16} if version == 6 else {}))).train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return model, lambda: model(pixel_values=pixels, labels=torch.tensor([0, 2])).loss


def _clip():
    from rwkv_hf.clip import RwkvClipConfig, RwkvClipModel

    torch.manual_seed(1)
    model = RwkvClipModel(RwkvClipConfig(
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, head_size=16),
        text_config=dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                         head_size=16))).train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    g = torch.Generator().manual_seed(0)
    ids, pixels = torch.randint(1, 50, (2, 9), generator=g), torch.randn(2, 3, 32, 32, generator=g)
    return model, lambda: model(input_ids=ids, pixel_values=pixels, return_loss=True).loss


def _point():
    from rwkv_hf.point import PointRwkvConfig, PointRwkvForPointCloudClassification

    torch.manual_seed(2)
    model = PointRwkvForPointCloudClassification(PointRwkvConfig(
        hidden_size=32, depths=[1, 1], num_heads=4, num_groups=[24, 12], group_sizes=[6, 6], k_neighbors=[4, 4],
        graph_iterations=1, num_labels=5, drop_path_rate=0.0, classifier_dropout=0.0)).train()
    points = torch.randn(2, 60, 3, generator=torch.Generator().manual_seed(0))
    return model, lambda: model(points=points, labels=torch.tensor([1, 3])).loss


FAMILIES = {"lm4": lambda: _lm(4), "lm5": lambda: _lm(5), "lm6": lambda: _lm(6), "lm7": lambda: _lm(7),
            "vision4": lambda: _vision(4), "vision6": lambda: _vision(6), "clip": _clip, "point": _point}


def _loss_and_grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_model_family_compiles_in_one_graph(family):
    """A training step (loss and every parameter's gradient) of each family, compiled with
    fullgraph=True, against eager mode; inference (no gradients) too."""
    model, loss_fn = FAMILIES[family]()
    want_loss, want_grads = _loss_and_grads(model, loss_fn)
    step = compiled(loss_fn)
    got_loss, got_grads = _loss_and_grads(model, step)
    assert rel_err(got_loss, want_loss) < 1e-5
    assert got_grads.keys() == want_grads.keys()
    bad = {n: rel_err(got_grads[n], want_grads[n]) for n in want_grads
           if not rel_err(got_grads[n], want_grads[n]) < 1e-4}
    assert not bad, bad
    model.eval()
    with torch.no_grad():
        assert rel_err(compiled(loss_fn)(), loss_fn()) < 1e-5


def test_one_compiled_graph_serves_every_sequence_length():
    """dynamic=True: the operators' fakes take symbolic lengths (the snapshot count included),
    so sequences of 70 to 300 tokens run one compiled training step (no recompilation) with
    eager mode's loss. (Up to 64 tokens, one snapshot: torch specialises a size of 1, so those
    lengths get a graph of their own.)"""
    model = tiny_model(7).train()

    def loss(ids):
        return model(input_ids=ids, labels=ids, use_cache=False).loss

    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    step = torch.compile(loss, fullgraph=True, backend=counter, dynamic=True)
    compiled = []
    for T in (70, 150, 300):
        ids = torch.randint(0, 97, (2, T), generator=torch.Generator().manual_seed(T))
        got = step(ids)
        got.backward()
        assert rel_err(got, loss(ids)) < 1e-6
        compiled.append(counter.frame_count)
    assert compiled[0] >= 1 and compiled == compiled[:1] * 3  # compiled on the first call only


def test_inductor_compiles_a_model():
    """The default backend (inductor: generated C++ for the model's own math, the WKV kernels
    called as operators): RWKV-7 generation-style inference and a training step."""
    model, loss_fn = _lm(7)
    want_loss, want_grads = _loss_and_grads(model, loss_fn)
    got_loss, got_grads = _loss_and_grads(model, compiled(loss_fn, backend="inductor"))
    assert rel_err(got_loss, want_loss) < 1e-4
    assert max(rel_err(got_grads[n], want_grads[n]) for n in want_grads) < 1e-3


def test_value_checks_survive_compilation():
    """A traced graph cannot read values back to Python: the decay, token-id and pixel checks
    become asserts in the graph, which still stop bad input."""
    x = make_inputs("wkv6", B=1, T=8, H=1, N=16)
    f = compiled(lambda x: ops.wkv6(**x)[0])
    f(x)  # good input runs
    with pytest.raises(RuntimeError, match="must be <= 0"):
        f({**x, "w": -x["w"]})
    with pytest.raises(RuntimeError, match="NaN or inf"):
        f({**x, "w": torch.full_like(x["w"], float("nan"))})
    model = tiny_model(7)
    g = compiled(lambda ids: model(input_ids=ids).logits)
    g(torch.tensor([[1, 2, 3]]))
    with pytest.raises(RuntimeError, match="outside the vocabulary"):
        g(torch.tensor([[1, 200, 3]]))
    vision, _ = _vision(6)
    h = compiled(lambda pixels: vision(pixel_values=pixels).logits)
    pixels = torch.randn(1, 3, 32, 32)
    h(pixels)
    pixels[0, 1, 5, 7] = float("nan")
    with pytest.raises(RuntimeError, match="NaN or infinite"):
        h(pixels)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_model_family_exports_for_inference(family):
    """torch.export (under no_grad: an inference graph) traces each family with the kernels as
    rwkv_hf operators in the graph, and the exported program gives eager mode's outputs."""
    model, _ = FAMILIES[family]()
    model.eval()
    if family.startswith("lm"):
        inputs = (torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(1)),)

        def logits(m, ids):
            return m(input_ids=ids, use_cache=False).logits
    elif family == "clip":
        g = torch.Generator().manual_seed(1)
        inputs = (torch.randint(1, 50, (2, 9), generator=g), torch.randn(2, 3, 32, 32, generator=g))

        def logits(m, ids, pixels):
            return m(input_ids=ids, pixel_values=pixels).logits_per_image
    elif family == "point":
        inputs = (torch.randn(2, 60, 3, generator=torch.Generator().manual_seed(1)),)

        def logits(m, points):
            return m(points=points).logits
    else:
        inputs = (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),)

        def logits(m, pixels):
            return m(pixel_values=pixels).logits

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *x):
            return logits(self.model, *x)

    with torch.no_grad():
        program = torch.export.export(Logits(), inputs)
        got, want = program.module()(*inputs), logits(model, *inputs)
    kernels = {str(n.target) for n in program.graph.nodes if str(n.target).startswith("rwkv_hf.")}
    assert kernels, "the exported graph calls no rwkv_hf operator"
    if family == "point":  # its sampling too, as one operator
        assert "rwkv_hf.cpu_fps.default" in kernels, kernels
    assert rel_err(got, want) < 1e-5
