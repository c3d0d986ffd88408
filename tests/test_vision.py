"""Vision-RWKV (VRWKV, VRWKV6): parity with a re-implementation of the official forward, the
converter, the transformers / pipeline / AutoBackbone / timm views of one set of weights,
bad input."""
import os
import sys
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from transformers import (AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel,
                          AutoModelForImageClassification, pipeline)

import rwkv_hf  # noqa: F401
from rwkv_hf.cli import main
from rwkv_hf.conversion.convert import convert
from rwkv_hf.vision import (VRWKV6_SIZES, VRWKV_CLASSES, VRWKV_SIZES, Vrwkv6Config, VrwkvConfig,
                            VrwkvImageProcessor)
from rwkv_hf.vision.timm_vrwkv import TIMM_MODEL_NAMES

sys.path.insert(0, os.path.dirname(__file__))
import vrwkv_official as official  # noqa: E402


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _switches(version, size):
    """The block configuration of a published size, at test width/depth."""
    s = dict((VRWKV6_SIZES if version == 6 else VRWKV_SIZES)[size])
    return dict(post_norm=s.get("post_norm", False), init_values=s.get("layer_scale_init_value"),
                key_norm=s.get("key_norm", False), hidden_dims=48 if s.get("classifier_hidden_size") else None)


def _official(version, size, C=None, depth=2, img_size=224, patch=16, num_classes=7, seed=0):
    sw = _switches(version, size)
    C = C or (128 if version == 6 else 64)
    model = official.Classifier(num_classes, hidden_dims=sw["hidden_dims"], C=C, depth=depth, img_size=img_size,
                                patch=patch, post_norm=sw["post_norm"], init_values=sw["init_values"],
                                key_norm=sw["key_norm"], heads=C // 64 if version == 6 else 0)
    return official.randomize(model, seed).double().eval(), sw


def _ours_for(version, sw, C, depth=2, img_size=224, patch=16, num_classes=7):
    cls = Vrwkv6Config if version == 6 else VrwkvConfig
    cfg = cls(hidden_size=C, num_hidden_layers=depth, image_size=img_size, patch_size=patch,
              post_norm=sw["post_norm"], layer_scale_init_value=sw["init_values"], key_norm=sw["key_norm"],
              classifier_hidden_size=sw["hidden_dims"], num_labels=num_classes)
    return VRWKV_CLASSES[version][2](cfg)


CASES = [(4, s) for s in VRWKV_SIZES] + [(6, s) for s in VRWKV6_SIZES]


@pytest.mark.parametrize("version,size", CASES)
def test_matches_the_official_forward_in_float64(version, size):
    off, sw = _official(version, size)
    C = off.backbone.pos_embed.shape[-1]
    ours = _ours_for(version, sw, C).double().eval()
    ours.load_state_dict(off.state_dict(), strict=True)  # the official key layout, as is
    torch.manual_seed(1)
    for hw in ((224, 224), (160, 272), (100, 75)):  # square, non-square, not a multiple of 16
        x = torch.randn(2, 3, *hw, dtype=torch.float64)
        with torch.no_grad():
            want, got = off(x), ours(x).logits
        assert rel_err(got, want) < 1e-10, (hw, rel_err(got, want))


def test_float32_model_is_close_to_the_float64_official_forward():
    for version in (4, 6):
        off, sw = _official(version, "small")
        ours = _ours_for(version, sw, off.backbone.pos_embed.shape[-1]).eval()
        ours.load_state_dict({k: v.float() for k, v in off.state_dict().items()})
        x = torch.randn(2, 3, 224, 192, dtype=torch.float64)
        with torch.no_grad():
            assert rel_err(ours(x.float()).logits.double(), off(x)) < 1e-4


def test_tiny_width_and_depth_of_the_published_model():
    off, sw = _official(4, "tiny", C=192, depth=3)
    ours = _ours_for(4, sw, 192, depth=3).double().eval()
    ours.load_state_dict(off.state_dict())
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(ours(x).logits, off(x)) < 1e-10


# ----------------------------------------------------------------- one set of weights, four views


def _save_classifier(tmp_path, version=4, num_classes=5):
    off, sw = _official(version, "tiny", num_classes=num_classes)
    ours = _ours_for(version, sw, off.backbone.pos_embed.shape[-1], num_classes=num_classes).eval()
    ours.load_state_dict({k: v.float() for k, v in off.state_dict().items()})
    ours.config.id2label = {i: f"class_{i}" for i in range(num_classes)}
    ours.config.label2id = {v: k for k, v in ours.config.id2label.items()}
    folder = tmp_path / f"vrwkv{version}"
    ours.save_pretrained(folder)
    VrwkvImageProcessor().save_pretrained(folder)
    return folder, ours


def _image(seed=0, size=(300, 240)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("version", [4, 6])
def test_auto_classes_pipeline_backbone_and_timm_agree(tmp_path, version):
    folder, ours = _save_classifier(tmp_path, version)
    assert AutoConfig.from_pretrained(folder).model_type == ("rwkv_hf_vrwkv6" if version == 6 else "rwkv_hf_vrwkv")
    processor = AutoImageProcessor.from_pretrained(folder)
    assert type(processor).__name__ == "VrwkvImageProcessor"
    pixels = processor(_image(), return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 224, 224)

    clf = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = clf(pixels).logits
        # Same weights, equal values, not bit for bit: the loaded parameters sit at addresses that
        # are not 64-byte aligned (offsets into the loaded file; transformers 5.24, safetensors
        # 0.8), and the BLAS kernels then sum in another order (last-bit differences).
        torch.testing.assert_close(logits, ours(pixels).logits, rtol=1e-5, atol=1e-6)
    probs = logits.softmax(-1)[0]

    classify = pipeline("image-classification", model=str(folder), device="cpu")
    top = classify(_image(), top_k=3)
    assert [t["label"] for t in top] == [f"class_{i}" for i in probs.argsort(descending=True)[:3].tolist()]
    assert abs(top[0]["score"] - float(probs.max())) < 1e-5

    base = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        assert torch.equal(base(pixels).pooler_output, clf.backbone(pixels).pooler_output)

    # transformers 5.24's AutoBackbone.from_pretrained asks the Hub whether a local folder is a
    # repository (and fails offline), so load through the registered config and the class.
    config = AutoConfig.from_pretrained(folder, out_indices=[1, 2])
    auto_backbone = AutoBackbone.from_config(config)
    backbone_cls = VRWKV_CLASSES[version][3]
    assert type(auto_backbone) is backbone_cls
    backbone = backbone_cls.from_pretrained(folder, out_indices=[1, 2]).eval()
    x = torch.randn(2, 3, 128, 176)
    with torch.no_grad():
        maps = backbone(x).feature_maps
    assert [tuple(m.shape) for m in maps] == [(2, backbone.config.hidden_size, 8, 11)] * 2  # stride 16
    assert backbone.channels == [backbone.config.hidden_size] * 2

    name = "vrwkv6_tiny_patch16_224" if version == 6 else "vrwkv_tiny_patch16_224"
    overlay = dict(file=str(folder / "model.safetensors"), custom_load=True)
    feats = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, features_only=True,
                              out_indices=(0, 1), hidden_size=ours.config.hidden_size, num_hidden_layers=2,
                              num_classes=5).eval()
    with torch.no_grad():
        tf = feats(x)
    assert feats.feature_info.reduction() == [16, 16]
    # timm: raw block outputs; the transformers backbone final-norms the last block (official).
    assert torch.equal(tf[0], maps[0])
    assert torch.allclose(backbone.final_norm(tf[1].flatten(2).transpose(1, 2)),
                          maps[1].flatten(2).transpose(1, 2), atol=1e-6)
    classifier = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=5,
                                   hidden_size=ours.config.hidden_size, num_hidden_layers=2).eval()
    with torch.no_grad():
        assert torch.allclose(classifier(pixels), logits, atol=1e-6)


def test_timm_entry_points_for_every_published_variant():
    assert sorted(TIMM_MODEL_NAMES) == sorted([
        "vrwkv_tiny_patch16_224", "vrwkv_small_patch16_224", "vrwkv_base_patch16_224", "vrwkv_large_patch16_384",
        "vrwkv6_tiny_patch16_224", "vrwkv6_small_patch16_224", "vrwkv6_base_patch16_224"])
    listed = timm.list_models("vrwkv*")
    for name in TIMM_MODEL_NAMES:
        assert name in listed
        with torch.device("meta"):  # full-size shapes without allocating them
            m = timm.create_model(name)
        cfg = m.config
        size = name.split("_")[1]
        assert cfg.hidden_size == {"tiny": 192, "small": 384, "base": 768, "large": 1024}[size]
        assert cfg.num_hidden_layers == (24 if size == "large" else 12)
        assert m.pretrained_cfg["hf_hub_id"] == "OpenGVLab/Vision-RWKV"
    params = {n: sum(p.numel() for p in timm.create_model(n, pretrained=False).parameters()) / 1e6
              for n in ("vrwkv_tiny_patch16_224", "vrwkv6_tiny_patch16_224")}
    # the published parameter counts (README): 6.2M and 7.6M
    assert abs(params["vrwkv_tiny_patch16_224"] - 6.2) < 0.1 and abs(params["vrwkv6_tiny_patch16_224"] - 7.6) < 0.1


def test_timm_forward_intermediates_and_reset_classifier():
    m = timm.create_model("vrwkv_tiny_patch16_224", num_hidden_layers=4, hidden_size=64).eval()
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        final, inter = m.forward_intermediates(x, indices=2)
        assert len(inter) == 2 and inter[0].shape == (1, 64, 6, 4)
        nlc = m.forward_intermediates(x, indices=[0], output_fmt="NLC", intermediates_only=True)
        assert nlc[0].shape == (1, 24, 64)
        assert torch.allclose(m.forward_head(final), m(x))
    m.reset_classifier(3)
    assert m(x).shape == (1, 3)
    m.reset_classifier(0)
    assert m(x).shape == (1, 64)


# ----------------------------------------------------------------- conversion


def _fake_yacs():
    """A stand-in for yacs' CfgNode (a dict subclass with __dict__ flags), importable while
    saving and removed before loading: the converter must not need it."""
    yacs, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, init=None):
            super().__init__(init or {})
            self.__dict__["__immutable__"] = False

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    config.CfgNode = CfgNode
    yacs.config = config
    return {"yacs": yacs, "yacs.config": config}, CfgNode


def _official_checkpoint(path, version, size, meta_text=None, yacs=None, extra_tensors=None, **kw):
    off, _ = _official(version, size, **kw)
    sd = {k: v.float() for k, v in off.state_dict().items()}
    ckpt = {"state_dict": sd, "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}}}
    if meta_text is not None:
        ckpt["meta"] = {"config": meta_text, "CLASSES": [f"c{i}" for i in range(7)], "epoch": 300}
    if extra_tensors:
        sd.update(extra_tensors)
    if yacs is not None:
        modules, CfgNode = _fake_yacs()
        sys.modules.update(modules)
        try:
            node = CfgNode({"MODEL": CfgNode({"VRWKV": CfgNode(yacs)}), "DATA": CfgNode({"IMG_SIZE": 384})})
            ckpt["config"] = node
            torch.save(ckpt, path)
        finally:
            for name in modules:
                sys.modules.pop(name, None)
    else:
        torch.save(ckpt, path)
    return off


def test_convert_mmcls_checkpoint_reads_metadata_and_reproduces_outputs(tmp_path, capsys):
    # a pre-norm model wider than 192: only the metadata can say it is not post-norm
    src = tmp_path / "vrwkv_custom.pth"
    text = "model = dict(type='ImageClassifier', backbone=dict(type='VRWKV', post_norm=False, init_values=None))"
    off = _official_checkpoint(src, 4, "tiny", meta_text=text, C=256)
    assert main(["convert", str(src), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "discarded:  2 checkpoint entries" in printed and "optimizer" in printed and "meta" in printed
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert model.config.post_norm is False and model.config.id2label[3] == "c3"
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(model.double()(x).logits, off(x)) < 1e-6
    card = (tmp_path / "out" / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and "vision-rwkv" in card
    assert AutoImageProcessor.from_pretrained(tmp_path / "out").crop_size == {"height": 224, "width": 224}


def test_convert_internimage_large_with_yacs_config(tmp_path):
    src = tmp_path / "vrwkv_l.pth"
    off = _official_checkpoint(src, 4, "large",
                               yacs={"POST_NORM": True, "INIT_VALUES": 1e-5, "IMG_SIZE": 192}, img_size=192)
    report = convert(src, tmp_path / "out", verbose=False)
    assert report["discarded_entries"] == ["optimizer", "config"] or set(report["discarded_entries"]) == {
        "optimizer", "config"}
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()
    cfg = model.config
    assert cfg.post_norm and cfg.key_norm and cfg.classifier_hidden_size == 48 and cfg.layer_scale_init_value == 1e-5
    assert AutoImageProcessor.from_pretrained(tmp_path / "out").crop_size == {"height": 384, "width": 384}
    x = torch.randn(1, 3, 384, 384, dtype=torch.float64)  # evaluated at 384 from a 192 grid
    with torch.no_grad():
        assert rel_err(model.double()(x).logits, off(x)) < 1e-6
    assert "yacs" not in sys.modules


def test_convert_vrwkv6_without_metadata_uses_the_published_rule(tmp_path):
    src = tmp_path / "vrwkv6_s.pth"
    torch.save({"state_dict": {k: v.float() for k, v in _official(6, "small", C=256)[0].state_dict().items()}}, src)
    report = convert(src, tmp_path / "out", verbose=False)
    assert report["config"].post_norm is True and "post_norm is not recorded" in report["notes"][0]
    # the override wins
    report = convert(src, tmp_path / "out2", verbose=False, config_overrides={"post_norm": False})
    assert report["config"].post_norm is False and not report["notes"]


def test_convert_dense_task_backbone_reports_discarded_tensors(tmp_path):
    src = tmp_path / "upernet.pth"
    off, _ = _official(4, "tiny")
    sd = {k: v.float() for k, v in off.state_dict().items() if k.startswith("backbone.")}
    sd["decode_head.conv_seg.weight"] = torch.zeros(150, 64, 1, 1)
    sd["neck.lateral.weight"] = torch.zeros(4)
    torch.save({"state_dict": sd, "meta": {"config": "backbone=dict(post_norm=False)"}}, src)
    report = convert(src, tmp_path / "out", verbose=False)
    assert set(report["discarded_tensors"]) == {"decode_head.conv_seg.weight", "neck.lateral.weight"}
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert type(model).__name__ == "VrwkvModel"
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        want = off.backbone(x)[-1].flatten(2).transpose(1, 2)
        assert rel_err(model.double()(x).last_hidden_state, want) < 1e-6
    backbone = VRWKV_CLASSES[4][3].from_pretrained(tmp_path / "out", out_indices=[-1]).double().eval()
    with torch.no_grad():
        assert rel_err(backbone(x).feature_maps[0], off.backbone(x)[-1]) < 1e-6


def test_convert_refuses_unknown_backbone_tensors_and_ddp_prefix_is_stripped(tmp_path, capsys):
    off, _ = _official(4, "tiny")
    sd = {"module." + k: v.float() for k, v in off.state_dict().items()}
    torch.save(sd, tmp_path / "ddp.pth")
    assert convert(tmp_path / "ddp.pth", tmp_path / "ok", verbose=False)["config"].num_hidden_layers == 2
    sd["module.backbone.layers.0.att.mystery"] = torch.zeros(3)
    torch.save(sd, tmp_path / "bad.pth")
    assert main(["convert", str(tmp_path / "bad.pth"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "backbone.layers.0.att.mystery" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_converting_an_rwkv_hf_vision_folder_again_is_lossless(tmp_path):
    folder, ours = _save_classifier(tmp_path, 6)
    convert(folder, tmp_path / "again", verbose=False)
    again = AutoModelForImageClassification.from_pretrained(tmp_path / "again")
    for (k, a), (k2, b) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


# ----------------------------------------------------------------- bad input, config, training


def _small(version=4, **kw):
    cls = Vrwkv6Config if version == 6 else VrwkvConfig
    cfg = cls(hidden_size=128 if version == 6 else 32, num_hidden_layers=2, image_size=32, patch_size=8,
              num_labels=3, **kw)
    return VRWKV_CLASSES[version][2](cfg)


def test_bad_pixels_are_refused_with_clear_errors():
    model = _small().eval()
    with pytest.raises(ValueError, match="has 1 channels but this model takes 3"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(5x40 pixels\) is smaller than one 8x8 patch"):
        model(torch.randn(1, 3, 5, 40))
    bad = torch.randn(1, 3, 32, 32)
    bad[0, 1, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(bad)
    with pytest.raises(ValueError, match=r"\[batch, 3, height, width\]"):
        model(torch.randn(3, 32, 32))


def test_config_validation():
    with pytest.raises(ValueError, match="head_size"):
        Vrwkv6Config(hidden_size=100)
    with pytest.raises(ValueError, match="channel_gamma"):
        VrwkvConfig(channel_gamma=0.5)
    with pytest.raises(ValueError, match="image_size"):
        VrwkvConfig(image_size=8, patch_size=16)
    cfg = VrwkvConfig(image_size=[224, 160], out_indices=[3, 12])
    assert cfg.patch_grid == (14, 10) and cfg.out_features == ["stage3", "stage12"]
    assert VrwkvConfig.from_dict(cfg.to_dict()).out_indices == [3, 12]


@pytest.mark.parametrize("version", [4, 6])
def test_training_step_and_gradient_checkpointing(version):
    torch.manual_seed(0)
    model = _small(version, post_norm=True, layer_scale_init_value=0.5, key_norm=True).train()
    x, y = torch.randn(2, 3, 32, 24), torch.tensor([0, 2])
    loss = model(x, labels=y).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert all(g.abs().sum() > 0 for n, g in grads.items()), [n for n, g in grads.items() if g.abs().sum() == 0]
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(x, labels=y).loss.backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n], rtol=1e-5, atol=1e-7), n


def test_bf16_autocast_and_bf16_weights_keep_decays_in_fp32(tmp_path):
    model = _small(6).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x).logits
    with torch.no_grad():
        ref = model(x).logits
    assert rel_err(out.float(), ref) < 5e-2
    model.save_pretrained(tmp_path / "m")
    half = AutoModelForImageClassification.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    att = half.backbone.layers[0].att
    assert att.time_decay.dtype == torch.float32 and att.key.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert rel_err(half(x.bfloat16()).logits.float(), ref) < 5e-2


def test_timm_loads_official_checkpoints_safely(tmp_path):
    """timm's pretrained path reads an official mmcls .pth (pickled meta, 7-class head) with
    rwkv_hf's loader: another class count gets a fresh head, another size a resized grid, a
    backbone-only file the model's own head."""
    src = tmp_path / "vrwkv_t.pth"
    off = _official_checkpoint(src, 4, "tiny", meta_text="backbone=dict(post_norm=False)")
    kw = dict(hidden_size=64, num_hidden_layers=2, pretrained=True,
              pretrained_cfg_overlay=dict(file=str(src), custom_load=True))
    same = timm.create_model("vrwkv_tiny_patch16_224", num_classes=7, **kw).double().eval()
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(same(x), off(x)) < 1e-10
    other = timm.create_model("vrwkv_tiny_patch16_224", num_classes=3, img_size=160, **kw).eval()
    assert other.head.fc.out_features == 3 and other.backbone.pos_embed.shape[1] == 100
    assert torch.equal(other.backbone.layers[1].att.key.weight, off.backbone.layers[1].att.key.weight.float())
    bare = tmp_path / "backbone.pth"
    torch.save({k[len("backbone."):]: v.float() for k, v in off.state_dict().items() if k.startswith("backbone.")},
               bare)
    timm.create_model("vrwkv_tiny_patch16_224", num_classes=7, **dict(kw, pretrained_cfg_overlay=dict(
        file=str(bare), custom_load=True)))


@pytest.mark.parametrize("shift_pixel,gamma,group,grid", [
    (1, 1 / 4, 32, (3, 5)),   # VRWKV: one group of C channels, non-square grid
    (1, 0.25, 8, (4, 4)),     # VRWKV6: per-head groups
    (2, 1 / 4, 32, (5, 3)),   # a wider shift
    (1, 0.2, 30, (2, 7)),     # an unshifted tail in each group, uneven boundaries
    (3, 1 / 4, 32, (2, 3)),   # shifts past every border: zeros
])
def test_fused_q_shift_lerp_equals_the_eager_form(shift_pixel, gamma, group, grid):
    from rwkv_hf.vision import cpu_fused
    from rwkv_hf.vision.modeling_vrwkv import q_shift

    c = 32 if group != 30 else 60
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, grid[0] * grid[1], c, generator=gen)
    mus = [torch.rand(1, 1, c, generator=gen), None, torch.rand(c, generator=gen)]
    with torch.no_grad():
        fused = cpu_fused.q_shift_lerp(x, grid, shift_pixel, gamma, group, mus)
        xx = q_shift(x, grid, shift_pixel, gamma, group)
    assert fused is not None
    assert torch.equal(fused[1], xx)  # the shift alone: copies and zeros
    for got, mu in zip(fused, mus):
        want = xx if mu is None else torch.lerp(xx, x, mu.view(c))
        assert (got - want).abs().max() < 1e-6
    assert cpu_fused.q_shift_lerp(x.requires_grad_(), grid, shift_pixel, gamma, group, mus) is None  # autograd


@pytest.mark.parametrize("version,size", CASES)
def test_fused_cpu_inference_equals_the_eager_model(version, size, monkeypatch):
    """VRWKV and VRWKV6 blocks run whole, one C call each, and equal the eager model for every
    published block layout (post-norm, layer scale, key norm); with VRWKV6's low-rank mixing
    and decay weights far from their near-zero init, so that every term of its mixer counts."""
    from rwkv_hf.vision import cpu_fused

    ran = {"run_block": [], "q_shift_lerp": []}
    for name, log in ran.items():
        def counted(*args, _real=getattr(cpu_fused, name), _log=log):
            out = _real(*args)
            _log.append(out is not None)
            return out
        monkeypatch.setattr(cpu_fused, name, counted)
    sw = _switches(version, size)
    torch.manual_seed(0)
    model = _ours_for(version, sw, 128 if version == 6 else 64).eval()
    if version == 6:
        with torch.no_grad():
            for blk in model.backbone.layers:
                for name in ("time_maa_w1", "time_maa_w2", "time_decay_w1", "time_decay_w2"):
                    getattr(blk.att, name).normal_(0, 0.2)
                for name in "xwkvrg":
                    getattr(blk.att, f"time_maa_{name}").uniform_(-0.5, 1.5)
                blk.att.ln_x.weight.uniform_(0.5, 1.5)
                blk.att.ln_x.bias.normal_(0, 0.1)
    x = torch.randn(2, 3, 160, 272)
    with torch.no_grad():
        fused = model(x).logits
        assert ran == {"run_block": [True, True], "q_shift_lerp": []}  # two blocks, each one call
        monkeypatch.setenv("RWKV_HF_VISION_FUSED", "0")
        eager = model(x).logits
    assert not any(ran["run_block"][2:]) and not any(ran["q_shift_lerp"][2:])
    assert rel_err(fused, eager) < 1e-5


def test_fused_vision_blocks_leave_collected_hidden_states_alone(monkeypatch):
    model = _small(4).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        fused = model(x, output_hidden_states=True).hidden_states
        monkeypatch.setenv("RWKV_HF_VISION_FUSED", "0")
        eager = model(x, output_hidden_states=True).hidden_states
    assert len(fused) == len(eager) == 3
    for a, b in zip(fused, eager):  # each block's output as it was, not overwritten by the next
        assert rel_err(a, b) < 1e-5
