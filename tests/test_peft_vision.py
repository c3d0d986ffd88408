"""PEFT (LoRA) on Vision-RWKV (VRWKV, VRWKV6): default targets, adapting the shipped tiny
digit classifiers to inverted digits (their shipped held-out images, white on black turned
black on white), adapter save/reload (PeftModel and AutoPeftModel), merge, gradient
checkpointing, bad adapters."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

peft = pytest.importorskip("peft")
from peft import AutoPeftModel, LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as LORA_MAP  # noqa: E402
from transformers import AutoImageProcessor, AutoModelForImageClassification  # noqa: E402

import rwkv_hf  # noqa: E402,F401
from rwkv_hf.peft_support import DEFAULT_LORA_TARGETS  # noqa: E402
from rwkv_hf.pretrained import tiny_vision_model_path  # noqa: E402
from rwkv_hf.vision import VRWKV_CLASSES, Vrwkv6Config, VrwkvConfig  # noqa: E402

torch.set_num_threads(2)


def _inverted_digits():
    """The shipped held-out digits, inverted and preprocessed: 250 to train on, 109 to evaluate."""
    data = load_file(os.path.join(tiny_vision_model_path(), "heldout.safetensors"))
    processor = AutoImageProcessor.from_pretrained(tiny_vision_model_path())
    pixels = processor([Image.fromarray(255 - im.numpy()).convert("RGB") for im in data["images"]],
                       return_tensors="pt").pixel_values
    return (pixels[:250], data["labels"][:250]), (pixels[250:], data["labels"][250:])


TRAIN, VAL = _inverted_digits()


def _pretrained(version):
    path = tiny_vision_model_path(version)
    return path, AutoModelForImageClassification.from_pretrained(path).eval()


def _base(version, tmp_path, **kw):
    """A small random model saved to a folder (for the checks that need no training)."""
    cls = Vrwkv6Config if version == 6 else VrwkvConfig
    extra = dict(head_size=16) if version == 6 else {}
    cfg = cls(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_labels=10, **extra, **kw)
    torch.manual_seed(0)
    folder = str(tmp_path / f"base-{version}")
    VRWKV_CLASSES[version][2](cfg).save_pretrained(folder)
    return folder, AutoModelForImageClassification.from_pretrained(folder).eval()


def _val_loss(model):
    model.eval()
    with torch.no_grad():
        return model(pixel_values=VAL[0], labels=VAL[1]).loss.item()


def _accuracy(model):
    with torch.no_grad():
        return (model(pixel_values=VAL[0]).logits.argmax(-1) == VAL[1]).float().mean().item()


def _train(model, steps=30, lr=1e-2, batch=32):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(TRAIN[0]), (batch,), generator=gen)
        model(pixel_values=TRAIN[0][idx], labels=TRAIN[1][idx]).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def test_default_targets_registered():
    for cfg, *_ in VRWKV_CLASSES.values():
        assert LORA_MAP[cfg.model_type] == DEFAULT_LORA_TARGETS[cfg.model_type]


def test_rwkv_clip_lora_wraps_both_towers_and_trains(tmp_path):
    """Default targets: every block linear of both towers, nothing else; a LoRA step on the
    contrastive loss changes only the adapters; save / reload gives the same logits."""
    from peft import PeftModel, get_peft_model
    from rwkv_hf.clip import RwkvClipConfig, RwkvClipModel

    config = RwkvClipConfig(
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, head_size=16),
        text_config=dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, intermediate_size=64, head_size=16))
    base = RwkvClipModel(config)
    for name, p in base.named_parameters():  # the official text init zeroes some linears: no gradient
        torch.nn.init.normal_(p, std=0.1) if name.endswith("weight") and p.dim() == 2 else None
    linears = {n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False))
    wrapped = {n.split("base_model.model.", 1)[1].rsplit(".lora_A", 1)[0]
               for n, _ in model.named_parameters() if "lora_A" in n}
    assert wrapped == linears and len(linears) == 2 * (2 * 8)  # 2 towers x 2 blocks x (5 att + 3 ffn)
    ids = torch.randint(1, 50, (3, 9), generator=torch.Generator().manual_seed(0))
    px = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(input_ids=ids, pixel_values=px, return_loss=True).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert losses[-1] < losses[0]  # the adapters learn
    model.eval()
    with torch.no_grad():
        want = model(input_ids=ids, pixel_values=px).logits_per_image
    model.save_pretrained(tmp_path / "adapter")
    fresh = RwkvClipModel(config)
    fresh.load_state_dict(base_state)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids, pixel_values=px).logits_per_image, want)


@pytest.mark.parametrize("version", [4, 6])
def test_lora_adapts_to_inverted_digits_save_reload_merge(version, tmp_path):
    base_dir, model = _pretrained(version)
    pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=16))
    lora = {n.split(".lora_A")[0] for n, _ in pm.named_parameters() if ".lora_A." in n}
    # per block: att key value receptance output (gate), ffn key value receptance
    assert len(lora) == model.config.num_hidden_layers * (8 if version == 6 else 7)
    assert all((".lora_" in n) == p.requires_grad for n, p in pm.named_parameters())

    before, acc_before = _val_loss(pm), _accuracy(pm)
    _train(pm)
    after, acc_after = _val_loss(pm), _accuracy(pm)
    assert after < before / 2 and acc_after > acc_before + 0.2, (before, after, acc_before, acc_after)
    probe = VAL[0][:8]
    with torch.no_grad():
        tuned = pm(pixel_values=probe).logits

    out = str(tmp_path / "adapter")
    pm.save_pretrained(out)
    files = set(os.listdir(out))
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    assert not files & {"model.safetensors", "config.json"}

    fresh = AutoModelForImageClassification.from_pretrained(base_dir).eval()
    reloaded = PeftModel.from_pretrained(fresh, out).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values=probe).logits, tuned)
    auto = AutoPeftModel.from_pretrained(out, import_allowlist=["rwkv_hf"]).eval()
    with torch.no_grad():
        assert torch.equal(auto(pixel_values=probe).logits, tuned)

    merged = reloaded.merge_and_unload()
    assert type(merged) is VRWKV_CLASSES[version][2]
    assert not any(isinstance(m, LoraLayer) for m in merged.modules())
    assert not any("lora_" in k or "base_layer" in k for k in merged.state_dict())
    with torch.no_grad():
        assert (merged(pixel_values=probe).logits - tuned).abs().max().item() <= 1e-5


@pytest.mark.parametrize("version", [4, 6])
def test_gradient_checkpointing_same_lora_gradients(version, tmp_path):
    grads = []
    for checkpointing in (False, True):
        _, model = _base(version, tmp_path)
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        pm = get_peft_model(model, LoraConfig(init_lora_weights=False))
        pm.train()
        pm(pixel_values=TRAIN[0][:4], labels=TRAIN[1][:4]).loss.backward()
        grads.append({n: p.grad.clone() for n, p in pm.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7)


def test_bad_targets_and_adapters_are_clear_errors(tmp_path):
    _, m4 = _base(4, tmp_path)
    with pytest.raises(ValueError, match="not found in the base model"):
        get_peft_model(m4, LoraConfig(target_modules=["q_proj"]))
    # a VRWKV6 adapter (same sizes) into a VRWKV model
    _, m6 = _base(6, tmp_path)
    a6 = str(tmp_path / "a6")
    get_peft_model(m6, LoraConfig()).save_pretrained(a6)
    with pytest.raises(ValueError, match="Vrwkv6ForImageClassification.*VrwkvForImageClassification"):
        PeftModel.from_pretrained(_base(4, tmp_path / "x")[1], a6)
    # an adapter for width 32 into a width-48 model
    a4 = str(tmp_path / "a4")
    get_peft_model(m4, LoraConfig()).save_pretrained(a4)
    wide = VRWKV_CLASSES[4][2](VrwkvConfig(image_size=32, patch_size=4, hidden_size=48, num_hidden_layers=2,
                                           num_labels=10))
    with pytest.raises(ValueError, match="hidden_size=32.*hidden_size=48"):
        PeftModel.from_pretrained(wide, a4)


def test_new_label_set_trains_and_saves_the_head(tmp_path):
    base_dir, model = _base(4, tmp_path)
    pm = get_peft_model(model, LoraConfig(modules_to_save=["head"]))
    assert any(".modules_to_save." in n and p.requires_grad for n, p in pm.named_parameters())
    _train(pm, steps=3)
    out = str(tmp_path / "adapter")
    pm.save_pretrained(out)
    with torch.no_grad():
        tuned = pm(pixel_values=VAL[0][:4]).logits
    reloaded = PeftModel.from_pretrained(AutoModelForImageClassification.from_pretrained(base_dir), out).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values=VAL[0][:4]).logits, tuned)


def test_trainer_finetuning_script(tmp_path):
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("finetune_vision", os.path.join(root, "examples", "finetune_vision.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "run"
    script.main(["--out", str(out), "--max-steps", "20"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"] / 2
    assert metrics["eval_accuracy_after"] > metrics["eval_accuracy_before"] + 0.2
    files = set(os.listdir(out))
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    assert "preprocessor_config.json" in files
