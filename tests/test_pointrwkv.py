"""PointRWKV (rwkv_hf.point): the model against a float64 oracle written from the official code
(tests/pointrwkv_official.py), its geometry helpers against brute force, the config's checks,
save / load and the Auto classes, and the conversion of official checkpoints."""
import os

import pytest
import torch
from transformers import AutoConfig, AutoModel

import torch.nn.functional as F

from pointrwkv_official import official_logits, official_segmentation_logits
from rwkv_hf import PointRwkvConfig, PointRwkvForPointCloudClassification, PointRwkvForPointCloudSegmentation, PointRwkvModel
from rwkv_hf.conversion.convert import convert
from rwkv_hf.conversion.loading import ConversionError
from rwkv_hf.point.modeling_pointrwkv import BQE, knn

SMALL = dict(hidden_size=32, depths=[1, 2], num_heads=4, num_groups=[48, 24], group_sizes=[8, 6],
             k_neighbors=[4, 6], graph_iterations=2, num_labels=5)
THREE = dict(hidden_size=24, depths=[1, 1, 1], num_heads=3, num_groups=[40, 20, 10], group_sizes=[6, 6, 4],
             k_neighbors=[5, 4, 3], graph_iterations=1, num_labels=3)
SEG = dict(THREE, num_labels=6, num_shape_classes=4)  # three scales, as the released segmentation model


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def randomized(model, seed=0):
    """Every parameter and BatchNorm statistic at a non-trivial value (the inits zero some)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                x = torch.randn(t.shape, generator=g, dtype=torch.float64) * 0.3
                t.copy_(x.abs() + 0.5 if name.endswith("running_var") else x)
    return model


def clouds(B=2, N=120, seed=1, dtype=torch.float64):
    return torch.randn(B, N, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("kw", [SMALL, THREE], ids=["2-scales", "3-scales"])
def test_classifier_matches_the_official_oracle_in_float64(kw):
    config = PointRwkvConfig(**kw)
    model = randomized(PointRwkvForPointCloudClassification(config).double().eval())
    points = clouds()
    out = model(points)
    logits, features, centers = official_logits(model.state_dict(), config, points)
    assert rel(out.logits, logits) < 1e-10
    for a, b in zip(out.scale_features, features, strict=True):
        assert rel(a, b) < 1e-10
    for a, b in zip(out.centers, centers, strict=True):
        assert torch.equal(a, b)


def assert_gradients_match(model, run, oracle, seed):
    """Every parameter's gradient of a random projection of ``run(model)`` against the same of
    ``oracle(state dict)``, to 1e-8."""
    weights = {n: t.detach().clone().requires_grad_(t.is_floating_point() and "running" not in n)
               for n, t in model.state_dict().items()}
    out = run(model)
    up = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (out * up).sum().backward()
    (oracle(weights) * up).sum().backward()
    params = dict(model.named_parameters())
    assert params.keys() <= weights.keys()
    bad = {n: rel(p.grad, weights[n].grad) for n, p in params.items()
           if not rel(p.grad, weights[n].grad) < 1e-8}
    assert not bad, bad


def test_every_parameter_gradient_matches_the_oracle():
    config = PointRwkvConfig(**SMALL)
    model = randomized(PointRwkvForPointCloudClassification(config).double().eval())
    points = clouds(seed=2)
    assert_gradients_match(model, lambda m: m(points).logits,
                           lambda weights: official_logits(weights, config, points)[0], seed=3)


def test_float32_is_close_to_float64():
    config = PointRwkvConfig(**SMALL)
    model = randomized(PointRwkvForPointCloudClassification(config).double().eval())
    points = clouds(seed=4)
    want = model(points).logits
    got = model.float()(points.float()).logits
    assert rel(got.double(), want) < 1e-4


def test_knn_against_brute_force():  # farthest point sampling: test_ops.py
    points = clouds(B=2, N=60, seed=5)
    near = knn(7, points[:, :5], points)
    for b in range(2):
        for q in range(5):
            d = ((points[b] - points[b, q]) ** 2).sum(-1)
            assert set(near[b, q].tolist()) == set(d.argsort()[:7].tolist())


def test_bqe_shifts_four_channel_groups_circularly():
    bqe = BQE(10).double()
    with torch.no_grad():
        bqe.mu.fill_(0.3)
    x = torch.randn(2, 7, 10, dtype=torch.float64)
    shifted = torch.empty_like(x)
    for t in range(7):  # groups of 2, 2, 2 and the remaining 4 channels: offsets 0, -1, +1, -2
        shifted[:, t, 0:2] = x[:, t, 0:2]
        shifted[:, t, 2:4] = x[:, (t - 1) % 7, 2:4]
        shifted[:, t, 4:6] = x[:, (t + 1) % 7, 4:6]
        shifted[:, t, 6:] = x[:, (t - 2) % 7, 6:]
    want = x + (1 - torch.sigmoid(torch.tensor(0.3, dtype=torch.float64))) * shifted
    assert torch.allclose(bqe(x), want, rtol=0, atol=1e-14)


def test_outputs_are_deterministic_and_the_loss_uses_label_smoothing():
    config = PointRwkvConfig(**SMALL)
    model = PointRwkvForPointCloudClassification(config).eval()
    points = clouds(dtype=torch.float32)
    a, b = model(points), model(points)
    assert torch.equal(a.logits, b.logits) and a.logits.shape == (2, 5)
    labels = torch.tensor([1, 4])
    loss = model(points, labels=labels).loss
    want = torch.nn.functional.cross_entropy(a.logits, labels, label_smoothing=0.2)
    assert torch.allclose(loss, want)
    assert [f.shape for f in a.scale_features] == [(2, 48, 32), (2, 24, 32)]


def test_gradient_checkpointing_gives_the_same_gradients():
    config = PointRwkvConfig(**SMALL, drop_path_rate=0.0)
    model = randomized(PointRwkvForPointCloudClassification(config)).train()
    points, labels = clouds(dtype=torch.float32), torch.tensor([0, 3])
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.zero_grad()
        torch.manual_seed(0)  # the head's dropout
        model(points, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


def test_bad_inputs_and_configs_are_refused():
    model = PointRwkvModel(PointRwkvConfig(**SMALL)).eval()
    with pytest.raises(ValueError, match=r"\[B, N, 3\]"):
        model(torch.randn(2, 100, 2))
    with pytest.raises(ValueError, match="at least 48 points"):
        model(torch.randn(2, 40, 3))
    with pytest.raises(ValueError, match="NaN"):
        model(torch.full((1, 60, 3), float("nan")))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(1, 60, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="multiple of num_heads"):
        PointRwkvConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="one entry per scale"):
        PointRwkvConfig(depths=[1, 1], num_groups=[8, 4, 2])
    with pytest.raises(ValueError, match="k_neighbors"):
        PointRwkvConfig(num_groups=[8, 4, 2], k_neighbors=[4, 8, 2])


def test_released_size_and_auto_classes(tmp_path):
    with torch.device("meta"):
        full = PointRwkvForPointCloudClassification(PointRwkvConfig(num_labels=40))
    assert sum(p.numel() for p in full.parameters()) == 64_302_412
    model = PointRwkvForPointCloudClassification(PointRwkvConfig(**SMALL)).eval()
    model.save_pretrained(tmp_path / "m")
    assert type(AutoConfig.from_pretrained(tmp_path / "m")) is PointRwkvConfig
    points = clouds(dtype=torch.float32)
    again = PointRwkvForPointCloudClassification.from_pretrained(tmp_path / "m").eval()
    assert torch.equal(again(points).logits, model(points).logits)
    backbone = AutoModel.from_pretrained(tmp_path / "m").eval()
    assert type(backbone) is PointRwkvModel
    assert torch.equal(backbone(points).last_hidden_state, model.backbone(points).last_hidden_state)
    card = (tmp_path / "m" / "README.md").read_text()
    assert "PointRWKV" in card and "PointRwkvForPointCloudClassification" in card


def test_official_checkpoints_convert_and_back(tmp_path):
    config = PointRwkvConfig(**THREE)
    model = randomized(PointRwkvForPointCloudClassification(config)).float().eval()
    official = {"module." + k: v for k, v in model.state_dict().items()}  # DDP-saved
    torch.save({"model": official, "optimizer": {"state": {}}, "epoch": 300}, tmp_path / "ckpt.pth")
    sampling = dict(num_groups=THREE["num_groups"], group_sizes=THREE["group_sizes"],
                    k_neighbors=THREE["k_neighbors"])
    report = convert(str(tmp_path / "ckpt.pth"), str(tmp_path / "out"), verbose=False, config_overrides=sampling)
    assert report["discarded_entries"] == ["optimizer", "epoch"]
    points = clouds(dtype=torch.float32)
    folder = PointRwkvForPointCloudClassification.from_pretrained(tmp_path / "out").eval()
    assert torch.equal(folder(points).logits, model(points).logits)
    assert "official PointRWKV" in (tmp_path / "out" / "README.md").read_text()
    # without --set: the released sampling sizes for a 3-scale checkpoint, said in a note
    report = convert(str(tmp_path / "ckpt.pth"), str(tmp_path / "released"), verbose=False)
    assert report["config"].num_groups == [2048, 1024, 512] and "released configuration" in report["notes"][0]
    # back to the official state dict: the same keys and values
    convert(str(tmp_path / "out"), str(tmp_path / "back.pth"), verbose=False)
    back = torch.load(tmp_path / "back.pth")
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_conversion_refusals(tmp_path):
    config = PointRwkvConfig(**SMALL)  # two scales: the released sampling sizes do not apply
    sd = PointRwkvForPointCloudClassification(config).state_dict()
    torch.save(sd, tmp_path / "two.pth")
    with pytest.raises(ConversionError, match="--set"):
        convert(str(tmp_path / "two.pth"), str(tmp_path / "a"), verbose=False)
    torch.save(dict(sd, **{"backbone.extra.weight": torch.zeros(2)}), tmp_path / "extra.pth")
    with pytest.raises(ConversionError, match="backbone.extra.weight"):
        convert(str(tmp_path / "extra.pth"), str(tmp_path / "b"), verbose=False,
                config_overrides=dict(num_groups=[48, 24], group_sizes=[8, 6], k_neighbors=[4, 6]))
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_lora_with_the_default_targets_trains_and_reloads(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    config = PointRwkvConfig(**SMALL)
    base = PointRwkvForPointCloudClassification(config).eval()
    base.save_pretrained(tmp_path / "base")  # before LoRA goes in
    model = get_peft_model(base, LoraConfig(r=4, modules_to_save=["head"]))
    wrapped = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {"proj_r", "proj_k", "proj_v", "proj_g", "w_proj", "out_proj", "key_proj",
                       "receptance_proj", "value_proj", "fusion"}
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    points, labels = clouds(dtype=torch.float32), torch.tensor([1, 2])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for m in model.modules():  # their running statistics are buffers, which the adapter does not save
        if isinstance(m, torch.nn.BatchNorm1d):
            m.eval()
    losses = []
    for _ in range(6):
        torch.manual_seed(0)  # the same dropout each step
        loss = model(points=points, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    model.eval()
    want = model(points=points).logits
    model.save_pretrained(tmp_path / "adapter")
    fresh = PointRwkvForPointCloudClassification.from_pretrained(tmp_path / "base")
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    assert torch.allclose(reloaded(points=points).logits, want, atol=1e-5)


# ---------------------------------------------------------------------------- part segmentation

def test_segmentation_matches_the_official_oracle_in_float64():
    """Every point's part logits equal the oracle's (feature propagation from the coarsest scale
    to the points, the category embedding, the per-point head); the smaller scales' centres are
    among the larger's and the first scale's among the points, so propagation meets sources at
    distance 0, as ShapeNetPart's 2048-point clouds with 2048 first-scale centres do."""
    config = PointRwkvConfig(**SEG)
    model = randomized(PointRwkvForPointCloudSegmentation(config).double().eval())
    points, categories = clouds(), torch.tensor([1, 3])
    out = model(points, categories=categories)
    logits, features, _ = official_segmentation_logits(model.state_dict(), config, points, F.one_hot(categories, 4))
    assert out.logits.shape == (2, 120, 6)
    assert rel(out.logits, logits) < 1e-10
    assert all(rel(a, b) < 1e-10 for a, b in zip(out.scale_features, features, strict=True))
    # a one-hot (any weights over the categories) is taken as it is
    assert torch.equal(model(points, categories=F.one_hot(categories, 4).double()).logits, out.logits)


def test_segmentation_gradients_match_the_oracle():
    config = PointRwkvConfig(**SEG)
    model = randomized(PointRwkvForPointCloudSegmentation(config).double().eval(), seed=1)
    points, categories = clouds(seed=6), torch.tensor([0, 2])
    assert_gradients_match(
        model, lambda m: m(points, categories=categories).logits,
        lambda weights: official_segmentation_logits(weights, config, points, F.one_hot(categories, 4))[0], seed=7)


def test_segmentation_loss_any_number_of_scales_and_bad_categories():
    model = PointRwkvForPointCloudSegmentation(PointRwkvConfig(**dict(SMALL, num_shape_classes=3))).eval()
    points, labels = clouds(dtype=torch.float32), torch.randint(0, 5, (2, 120), generator=torch.Generator().manual_seed(0))
    out = model(points, categories=torch.tensor([0, 2]), labels=labels)  # two scales: one propagation less
    assert out.logits.shape == (2, 120, 5) and len(model.propagation_layers) == 2
    assert torch.allclose(out.loss, F.cross_entropy(out.logits.reshape(-1, 5), labels.reshape(-1)))
    with pytest.raises(ValueError, match="categories .* are required"):
        model(points)
    with pytest.raises(ValueError, match=r"one-hot \[B=2, num_shape_classes=3\]"):
        model(points, categories=torch.zeros(2, 4))
    with pytest.raises(RuntimeError, match="num_classes"):
        model(points, categories=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="num_shape_classes"):
        PointRwkvConfig(num_shape_classes=0)


def test_segmentation_checkpoint_converts_and_back(tmp_path):
    config = PointRwkvConfig(**SEG)
    model = randomized(PointRwkvForPointCloudSegmentation(config)).float().eval()
    torch.save({"model": {"module." + k: v for k, v in model.state_dict().items()}, "epoch": 300},
               tmp_path / "seg.pth")
    sampling = dict(num_groups=SEG["num_groups"], group_sizes=SEG["group_sizes"], k_neighbors=SEG["k_neighbors"])
    report = convert(str(tmp_path / "seg.pth"), str(tmp_path / "out"), verbose=False, config_overrides=sampling)
    assert report["config"].num_labels == 6 and report["config"].num_shape_classes == 4
    folder = PointRwkvForPointCloudSegmentation.from_pretrained(tmp_path / "out").eval()
    points, categories = clouds(dtype=torch.float32), torch.tensor([3, 0])
    assert torch.equal(folder(points, categories=categories).logits, model(points, categories=categories).logits)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "PointRwkvForPointCloudSegmentation" in card and "6 parts of 4 object categories" in card
    convert(str(tmp_path / "out"), str(tmp_path / "back.pth"), verbose=False)
    back = torch.load(tmp_path / "back.pth")
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
