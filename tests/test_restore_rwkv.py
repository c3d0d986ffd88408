"""Restore-RWKV: parity with a re-implementation of the official forward (outputs and
gradients, float64), the padding of any image size, the converter both ways, the Auto
classes, saving and loading, training, bad input."""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from transformers import AutoConfig, AutoModel, AutoModelForImageToImage  # noqa: E402

import rwkv_hf  # noqa: E402,F401
from rwkv_hf import ops  # noqa: E402
from rwkv_hf.cli import main  # noqa: E402
from rwkv_hf.conversion.convert import convert  # noqa: E402
from rwkv_hf.conversion.loading import ConversionError  # noqa: E402
from rwkv_hf.conversion.restore import to_official  # noqa: E402
from rwkv_hf.restore import RestoreRwkvConfig, RestoreRwkvForImageRestoration, RestoreRwkvModel  # noqa: E402
from rwkv_hf.restore.modeling_restore_rwkv import OmniShift, pad_to_multiple  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import restore_rwkv_official as official  # noqa: E402

SMALL = dict(dim=8, num_blocks=(1, 2, 1, 1), num_refinement_blocks=1)


def rel_err(a, b):
    return float((a - b).detach().abs().max() / b.detach().abs().max())


def _official(seed=0, **kw):
    model = official.OfficialRestoreRWKV(**dict(SMALL, **kw))
    return official.randomize(model, seed).double()


def _ours_from(off, tmp_path, name="ours"):
    """The official model's state dict through ``rwkv-hf convert``, loaded back."""
    torch.save(off.state_dict(), tmp_path / f"{name}.pth")
    report = convert(tmp_path / f"{name}.pth", tmp_path / name, verbose=False)
    return AutoModelForImageToImage.from_pretrained(tmp_path / name, dtype=torch.float64), report


def test_matches_the_official_forward_and_gradients_in_float64(tmp_path):
    off = _official()
    ours, report = _ours_from(off, tmp_path)
    assert type(ours) is RestoreRwkvForImageRestoration
    cfg = ours.config
    assert (cfg.hidden_size, cfg.num_blocks, cfg.num_refinement_blocks, cfg.recurrence) == (8, [1, 2, 1, 1], 1, 2)
    assert len(report["discarded_tensors"]) == sum(isinstance(m, official.OmniShift) for m in off.modules())
    x = torch.randn(2, 1, 16, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = torch.randn_like(x)
    # the official training form (four Omni-Shift branches) and its evaluation form (the fold)
    for fold in (False, True):
        official.set_reparam(off, fold)
        off.zero_grad()
        want = off(x)
        (want - target).abs().mean().backward()
        ours.zero_grad()
        out = ours(x, labels=target)
        out.loss.backward()
        assert rel_err(out.reconstruction, want) < 1e-12, fold
        assert torch.allclose(out.loss, (want - target).abs().mean(), rtol=1e-12)
        grads = {"restore_rwkv." + k if not k.startswith("output.") else k: p.grad
                 for k, p in off.named_parameters() if "conv5x5_reparam" not in k}
        for name, p in ours.named_parameters():
            assert rel_err(p.grad, grads[name]) < 1e-10, (fold, name)
    # the network part matters (the output is not the input's residual alone)
    assert rel_err(want - x, want) > 0.1


def test_float32_default_backend_is_close_to_the_float64_official_forward(tmp_path):
    off = _official(seed=3, num_blocks=(1, 1, 1, 1))
    ours, _ = _ours_from(off, tmp_path)
    ours = ours.float().eval()
    x = torch.randn(1, 1, 24, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = ours(x.float()).reconstruction
        want = off(x)
    assert rel_err(got.double() - x, want - x) < 2e-5


def test_the_recurrence_scans_rows_then_columns():
    """Re-WKV by hand with the reference backend: pass 1 over the rows, pass 2 over the columns
    (reading pass 1's output), pass 3 over the rows again."""
    torch.manual_seed(0)
    cfg = RestoreRwkvConfig(hidden_size=4, num_blocks=[1, 1, 1, 1], num_refinement_blocks=0, recurrence=3)
    att = RestoreRwkvForImageRestoration(cfg).restore_rwkv.encoder_level1[0].att.double()
    h, w, c = 3, 5, 4
    x = torch.randn(2, h * w, c, dtype=torch.float64)
    got = att(x, (h, w))
    t = att.omni_shift(x.transpose(1, 2).reshape(2, c, h, w)).flatten(2).transpose(1, 2)
    k, v, r = att.key(t), att.value(t), att.receptance(t)
    n = h * w
    for j in range(3):
        wj, uj = -att.spatial_decay[j] / n, att.spatial_first[j] / n
        if j == 1:  # columns: (h w) -> (w h) and back
            kc = k.view(2, h, w, c).transpose(1, 2).reshape(2, n, c)
            vc = v.view(2, h, w, c).transpose(1, 2).reshape(2, n, c)
            v = ops.bi_wkv4(kc, vc, wj, uj, backend="reference")[0].view(2, w, h, c).transpose(1, 2).reshape(2, n, c)
        else:
            v = ops.bi_wkv4(k, v, wj, uj, backend="reference")[0]
    assert rel_err(got, att.output(torch.sigmoid(r) * v)) < 1e-12


def test_any_image_size_is_padded_by_reflection_and_cropped_back(tmp_path):
    off = _official(seed=4, num_blocks=(1, 1, 1, 1))
    ours, _ = _ours_from(off, tmp_path)
    official.set_reparam(off, True)
    x = torch.randn(1, 1, 13, 21, dtype=torch.float64)
    padded = torch.nn.functional.pad(x, (0, 3, 0, 3), mode="reflect")
    assert torch.equal(pad_to_multiple(x), padded)
    out = ours(x, output_hidden_states=True)
    assert out.reconstruction.shape == x.shape
    assert rel_err(out.reconstruction, off(padded)[..., :13, :21]) < 1e-12
    assert [tuple(s.shape[-2:]) for s in out.hidden_states] == \
        [(16, 24), (16, 24), (8, 12), (4, 6), (2, 3), (4, 6), (8, 12), (16, 24), (16, 24)]
    # the trunk crops its features back too; images smaller than the padding replicate
    trunk = AutoModel.from_pretrained(tmp_path / "ours", dtype=torch.float64)
    assert type(trunk) is RestoreRwkvModel
    assert trunk(x).last_hidden_state.shape == (1, 16, 13, 21)
    assert ours(torch.randn(1, 1, 3, 2, dtype=torch.float64)).reconstruction.shape == (1, 1, 3, 2)


def test_converting_back_reproduces_the_official_state_dict_bit_for_bit(tmp_path, capsys):
    off = _official(seed=5)
    official.set_reparam(off, True)
    with torch.no_grad():
        off(torch.randn(1, 1, 8, 8, dtype=torch.float64))  # the official eval forward writes the folds
    src = off.state_dict()
    torch.save({"state_dict": {"module." + k: v for k, v in src.items()}}, tmp_path / "ddp.pth")
    assert main(["convert", str(tmp_path / "ddp.pth"), str(tmp_path / "folder")]) == 0
    printed = capsys.readouterr().out
    assert "official Restore-RWKV" in printed and "conv5x5_reparam" in printed
    model = AutoModelForImageToImage.from_pretrained(tmp_path / "folder", dtype=torch.float64)
    back = to_official(model)
    assert list(back) == list(src)
    assert main(["convert", str(tmp_path / "folder"), str(tmp_path / "back.pth")]) == 0
    assert "conv5x5_reparam" in capsys.readouterr().out
    saved = torch.load(tmp_path / "back.pth", weights_only=True)
    assert list(saved) == list(src) and all(torch.equal(saved[k], v) for k, v in src.items())
    for key, tensor in src.items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key
    card = (tmp_path / "folder" / "README.md").read_text()
    assert "pipeline_tag: image-to-image" in card
    folds = sum(isinstance(m, official.OmniShift) for m in off.modules())  # 20: 10 blocks, 2 each
    assert f"Discarded from the source (not part of the model): {folds} `*.omni_shift.conv5x5_reparam.weight`" in card
    # an rwkv_hf folder converts again without loss
    convert(tmp_path / "folder", tmp_path / "again", verbose=False)
    again = AutoModelForImageToImage.from_pretrained(tmp_path / "again", dtype=torch.float64)
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_converter_refuses_what_it_cannot_place(tmp_path):
    sd = _official().state_dict()
    torch.save(dict(sd, **{"encoder_level1.0.att.extra": torch.zeros(3)}), tmp_path / "extra.pth")
    with pytest.raises(ConversionError, match="unknown tensors.*encoder_level1.0.att.extra"):
        convert(tmp_path / "extra.pth", tmp_path / "out1", verbose=False)
    torch.save({k: v for k, v in sd.items() if k != "latent.0.ffn.key.weight"}, tmp_path / "missing.pth")
    with pytest.raises(ConversionError, match="missing.*latent.0.ffn.key.weight"):
        convert(tmp_path / "missing.pth", tmp_path / "out2", verbose=False)
    torch.save({k: v for k, v in sd.items() if not k.startswith("decoder_level2.1.")}, tmp_path / "decoder.pth")
    with pytest.raises(ConversionError, match="decoder levels 1-3 have"):
        convert(tmp_path / "decoder.pth", tmp_path / "out3", verbose=False)
    assert not any((tmp_path / f"out{i}").exists() for i in (1, 2, 3))
    # a trunk alone (no output convolution) becomes the base model
    torch.save({k: v for k, v in sd.items() if not k.startswith("output.")}, tmp_path / "trunk.pth")
    report = convert(tmp_path / "trunk.pth", tmp_path / "trunk", verbose=False)
    assert report["architecture"] == "RestoreRwkvModel"
    assert type(AutoModel.from_pretrained(tmp_path / "trunk")) is RestoreRwkvModel


def test_auto_classes_save_and_load(tmp_path):
    cfg = RestoreRwkvConfig(hidden_size=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, num_channels=3)
    model = RestoreRwkvForImageRestoration(cfg).eval()
    model.save_pretrained(tmp_path / "m")
    assert type(AutoConfig.from_pretrained(tmp_path / "m")) is RestoreRwkvConfig
    loaded = AutoModelForImageToImage.from_pretrained(tmp_path / "m").eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():  # last-bit differences allowed (see the property test)
        assert rel_err(loaded(x).reconstruction, model(x).reconstruction) < 1e-6
    # the published configuration, built on the meta device: the official parameter count less
    # the 374,400 derived conv5x5_reparam weights
    with torch.device("meta"):
        full = RestoreRwkvForImageRestoration(RestoreRwkvConfig())
    assert sum(p.numel() for p in full.parameters()) == 28_371_137 - 374_400


def test_omni_shift_fold_equals_the_four_branches():
    torch.manual_seed(0)
    shift = OmniShift(6).double()
    for p in shift.parameters():
        torch.nn.init.normal_(p)
    x = torch.randn(2, 6, 9, 7, dtype=torch.float64)
    conv = torch.nn.functional.conv2d
    branches = (shift.alpha[0] * x + shift.alpha[1] * conv(x, shift.conv1x1.weight, groups=6)
                + shift.alpha[2] * conv(x, shift.conv3x3.weight, padding=1, groups=6)
                + shift.alpha[3] * conv(x, shift.conv5x5.weight, padding=2, groups=6))
    assert rel_err(shift(x), branches) < 1e-13


def test_training_step_gradient_checkpointing_and_bf16(tmp_path):
    torch.manual_seed(0)
    cfg = RestoreRwkvConfig(hidden_size=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    model = RestoreRwkvForImageRestoration(cfg).train()
    x, y = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    model(x, labels=y).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(g.abs().sum() > 0 for g in grads.values())
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(x, labels=y).loss.backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n], rtol=1e-5, atol=1e-7), n
    model.save_pretrained(tmp_path / "m")
    bf16 = AutoModelForImageToImage.from_pretrained(tmp_path / "m", dtype=torch.bfloat16).eval()
    assert bf16.restore_rwkv.latent[0].att.spatial_decay.dtype == torch.float32  # kept fp32
    assert bf16.output.weight.dtype == torch.bfloat16
    with torch.no_grad():
        out = bf16(x).reconstruction
        want = model.eval()(x).reconstruction
    assert out.dtype == torch.bfloat16 and rel_err(out.float(), want) < 5e-2


def test_bad_input_and_config_are_refused_clearly():
    model = RestoreRwkvForImageRestoration(RestoreRwkvConfig(hidden_size=8, num_blocks=[1, 1, 1, 1],
                                                             num_refinement_blocks=0))
    with pytest.raises(ValueError, match="1 \\(config.num_channels\\)"):
        model(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="floating point"):
        model(torch.zeros(1, 1, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN"):
        model(torch.full((1, 1, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="batch, 1, height, width"):
        model(torch.rand(1, 16, 16))
    with pytest.raises(ValueError, match="labels must have"):
        model(torch.rand(1, 1, 16, 16), labels=torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="out_channels .* must equal num_channels"):
        RestoreRwkvConfig(num_channels=1, out_channels=3)
    assert RestoreRwkvConfig(num_channels=1, out_channels=3, residual=False).out_channels == 3
    with pytest.raises(ValueError, match="num_blocks must list"):
        RestoreRwkvConfig(num_blocks=[1, 2, 3])
    with pytest.raises(ValueError, match="hidden_size must be an integer >= 1"):
        RestoreRwkvConfig(hidden_size=0)
    with pytest.raises(ValueError, match="hidden_size must be even"):
        RestoreRwkvConfig(hidden_size=7)


def test_lora_with_default_targets_trains_saves_and_reloads(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    cfg = RestoreRwkvConfig(hidden_size=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    base = RestoreRwkvForImageRestoration(cfg)
    base.save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(base, LoraConfig(r=4, init_lora_weights=False))
    wrapped = {n.rsplit(".", 1)[0] for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert len(wrapped) == 7 * 8  # 7 linears in each of the 8 blocks (3 + 1 + 3 + 1)
    assert not any(n.endswith(("model.output", "omni_shift")) for n in wrapped)
    x = torch.rand(1, 1, 16, 16)
    peft_model(x, labels=torch.rand(1, 1, 16, 16)).loss.backward()
    assert all(p.grad is not None for n, p in peft_model.named_parameters() if p.requires_grad)
    peft_model.eval()
    with torch.no_grad():
        want = peft_model(x).reconstruction
    peft_model.save_pretrained(tmp_path / "adapter")
    fresh = AutoModelForImageToImage.from_pretrained(tmp_path / "base")
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x).reconstruction, want, atol=1e-6)


def test_a_saved_folder_is_publishable(tmp_path):
    from rwkv_hf.publish import check_model_folder

    cfg = RestoreRwkvConfig(hidden_size=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=0)
    RestoreRwkvForImageRestoration(cfg).save_pretrained(tmp_path / "m")
    model_type, files = check_model_folder(tmp_path / "m")
    assert model_type == "rwkv_hf_restore_rwkv"
    assert {"config.json", "model.safetensors", "README.md", "modeling_restore_rwkv.py", "wkv_ops.py"} <= set(files)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dim=st.sampled_from([2, 4, 6]), blocks=st.lists(st.integers(0, 2), min_size=4, max_size=4),
       refinement=st.integers(0, 2), channels=st.integers(1, 3), h=st.integers(1, 20), w=st.integers(1, 20),
       seed=st.integers(0, 2**16))
def test_random_configs_match_the_official_forward_and_survive_save_and_load(dim, blocks, refinement, channels,
                                                                               h, w, seed):
    import tempfile

    off = official.randomize(official.OfficialRestoreRWKV(inp_channels=channels, out_channels=channels, dim=dim,
                                                          num_blocks=blocks, num_refinement_blocks=refinement),
                             seed).double()
    official.set_reparam(off, seed % 2 == 0)
    cfg = RestoreRwkvConfig(num_channels=channels, hidden_size=dim, num_blocks=blocks,
                            num_refinement_blocks=refinement)
    ours = RestoreRwkvForImageRestoration(cfg).double()
    placed = {k if k.startswith("output.") else "restore_rwkv." + k: v
              for k, v in off.state_dict().items() if "conv5x5_reparam" not in k}
    ours.load_state_dict(placed, strict=True)
    x = torch.randn(2, channels, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    out = ours(x, labels=torch.zeros_like(x))
    want = off(pad_to_multiple(x))[..., :h, :w]
    assert rel_err(out.reconstruction, want) < 1e-10
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters())
    with tempfile.TemporaryDirectory() as folder:
        ours.save_pretrained(folder, remote_code=False)
        again = AutoModelForImageToImage.from_pretrained(folder, dtype=torch.float64)
    # the same weights; the loaded ones sit at other addresses (alignment), which lets the
    # vectorised kernels round differently in the last bit
    with torch.no_grad():
        assert rel_err(again(x).reconstruction, ours(x).reconstruction) < 1e-12
