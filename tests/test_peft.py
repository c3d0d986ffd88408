"""PEFT (LoRA) and state tuning on the RWKV language models v4-v7: default targets, training
on the shipped pydoc corpus, adapter save/reload, merge, bad adapters, gradient
checkpointing, per-channel vectors, and state tuning's train/save/reload."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

peft = pytest.importorskip("peft")
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as LORA_MAP  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

import rwkv_hf  # noqa: E402,F401  (registers the models and the PEFT defaults)
from rwkv_hf.lm import RWKV_LM_CLASSES  # noqa: E402
from rwkv_hf.peft_support import (DEFAULT_LORA_TARGETS, load_time_mix, mark_time_mix_trainable,  # noqa: E402
                                  save_time_mix)
from rwkv_hf.pretrained import corpus  # noqa: E402
from rwkv_hf.state_tuning import StateTuningModel, add_state_tuning  # noqa: E402
from lm_utils import VERSIONS, VOCAB, rel_err, tiny_model  # noqa: E402

torch.set_num_threads(2)
CTX, BATCH, STEPS = 32, 4, 16  # small: the WKV ops cost ~0.2-0.8 s per step on 2 CPU cores


def _char_ids(split, n_chars):
    """The pydoc corpus split as character ids in the tiny vocabulary (printable ASCII)."""
    text = "\n".join(corpus.documents(split))[:n_chars]
    return torch.tensor([min(max(ord(ch) - 30, 0), VOCAB - 1) for ch in text], dtype=torch.long)


TRAIN = _char_ids("train", 40_000)
VAL = _char_ids("val", BATCH * CTX * 2)


def _batch(step):
    gen = torch.Generator().manual_seed(step)
    starts = torch.randint(0, TRAIN.numel() - CTX, (BATCH,), generator=gen)
    return torch.stack([TRAIN[s:s + CTX] for s in starts.tolist()])


def _val_loss(model):
    ids = VAL[:BATCH * CTX].view(BATCH, CTX)
    was = model.training
    model.eval()
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    model.train(was)
    return loss


def _train(model, params, steps=STEPS, lr=2e-2):
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    for step in range(steps):
        ids = _batch(step)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def _saved_base(version, tmp_path, **overrides):
    """A tiny model saved to a local folder and reloaded from it (so adapters point at a path)."""
    folder = str(tmp_path / f"base-v{version}")
    tiny_model(version, **overrides).save_pretrained(folder)
    return folder, AutoModelForCausalLM.from_pretrained(folder).eval()


def _probe():
    return VAL[-2 * CTX:].view(2, CTX)


# --------------------------------------------------------------------------- LoRA


def test_default_targets_registered():
    for cfg, *_ in RWKV_LM_CLASSES.values():
        assert LORA_MAP[cfg.model_type] == DEFAULT_LORA_TARGETS[cfg.model_type]


@pytest.mark.parametrize("version", VERSIONS)
def test_lora_train_save_reload_merge(version, tmp_path):
    base_dir, model = _saved_base(version, tmp_path)
    pm = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16))
    lora_names = {n.split(".lora_A")[0] for n, _ in pm.named_parameters() if ".lora_A." in n}
    n_layers = model.config.num_hidden_layers
    assert len(lora_names) == n_layers * {4: 7, 5: 8, 6: 8, 7: 6}[version]  # attn r k v o (g), ffn k v (r)
    assert all(p.requires_grad == (".lora_" in n) for n, p in pm.named_parameters())

    before = _val_loss(pm)
    _train(pm, [p for p in pm.parameters() if p.requires_grad])
    after = _val_loss(pm)
    assert after < before - 0.15, (before, after)

    probe = _probe()
    with torch.no_grad():
        tuned = pm(input_ids=probe).logits

    out = str(tmp_path / "adapter")
    pm.save_pretrained(out)
    files = set(os.listdir(out))
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin", "config.json"}
    adapter_bytes = os.path.getsize(os.path.join(out, "adapter_model.safetensors"))
    base_bytes = os.path.getsize(os.path.join(base_dir, "model.safetensors"))
    assert adapter_bytes < base_bytes / 2

    fresh = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    reloaded = PeftModel.from_pretrained(fresh, out).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=probe).logits, tuned)
    auto = AutoPeftModelForCausalLM.from_pretrained(out, import_allowlist=["rwkv_hf"]).eval()
    with torch.no_grad():
        assert torch.equal(auto(input_ids=probe).logits, tuned)

    merged = reloaded.merge_and_unload()
    assert type(merged) is RWKV_LM_CLASSES[version][2]
    assert not any(isinstance(m, LoraLayer) for m in merged.modules())
    assert not any("lora_" in k or "base_layer" in k for k in merged.state_dict())
    with torch.no_grad():
        assert (merged(input_ids=probe).logits - tuned).abs().max().item() <= 1e-5


def test_missing_target_is_a_clear_error():
    with pytest.raises(ValueError, match="not found in the base model"):
        get_peft_model(tiny_model(7), LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj"]))


def test_adapter_for_another_model_is_refused(tmp_path):
    # RWKV-6 adapter into an RWKV-5 model of the same sizes: every LoRA shape would fit.
    _, m6 = _saved_base(6, tmp_path)
    a6 = str(tmp_path / "a6")
    get_peft_model(m6, LoraConfig(task_type="CAUSAL_LM")).save_pretrained(a6)
    _, m5 = _saved_base(5, tmp_path)
    with pytest.raises(ValueError, match="(RWKV-6|rwkv_hf_v6).*this model is (RWKV-5|rwkv_hf_v5)"):
        PeftModel.from_pretrained(m5, a6)

    # RWKV-7 adapter for hidden 32 into a hidden-48 RWKV-7.
    base7, m7 = _saved_base(7, tmp_path)
    a7 = str(tmp_path / "a7")
    get_peft_model(m7, LoraConfig(task_type="CAUSAL_LM")).save_pretrained(a7)
    big = tiny_model(7, hidden_size=48, intermediate_size=64)
    with pytest.raises(ValueError, match="hidden_size=32.*hidden_size=48"):
        PeftModel.from_pretrained(big, a7)
    # without the base folder, the LoRA weight shapes still tell
    os.remove(os.path.join(base7, "config.json"))
    with pytest.raises(ValueError, match="another model size"):
        PeftModel.from_pretrained(tiny_model(7, hidden_size=48, intermediate_size=64), a7)


@pytest.mark.parametrize("version", VERSIONS)
def test_gradient_checkpointing_same_lora_gradients(version):
    ids = _batch(0)
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(version)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        pm = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False))
        pm.train()
        pm(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in pm.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("version", VERSIONS)
def test_time_mix_vectors_train_and_round_trip(version, tmp_path):
    base_dir, model = _saved_base(version, tmp_path)
    pm = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM"))
    names = mark_time_mix_trainable(pm)
    per_layer = {4: 5, 5: 6, 6: 8, 7: 7}[version]  # attn + ffn mixing vectors
    assert len(names) == per_layer * model.config.num_hidden_layers
    start = {n: p.detach().clone() for n, p in pm.get_base_model().named_parameters() if n in names}
    _train(pm, [p for p in pm.parameters() if p.requires_grad], steps=3)
    moved = [n for n, p in pm.get_base_model().named_parameters() if n in names and not torch.equal(p, start[n])]
    assert sorted(moved) == names
    probe = _probe()
    with torch.no_grad():
        tuned = pm(input_ids=probe).logits
    out = str(tmp_path / "adapter")
    pm.save_pretrained(out)
    save_time_mix(pm, out)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out).eval()
    load_time_mix(reloaded, out)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=probe).logits, tuned)
        merged = reloaded.merge_and_unload()
        assert rel_err(merged(input_ids=probe).logits, tuned) <= 1e-5
    with pytest.raises(ValueError, match="holds vectors of a"):
        load_time_mix(tiny_model(5 if version != 5 else 6), out)


# --------------------------------------------------------------------------- state tuning


@pytest.mark.parametrize("version", (5, 6, 7))
def test_state_tuning(version, tmp_path):
    model = tiny_model(version)
    probe = _probe()
    with torch.no_grad():
        base_logits = model(input_ids=probe).logits
    st = add_state_tuning(model)
    with torch.no_grad():  # zero initial states: exactly the base model
        assert torch.equal(st(input_ids=probe).logits, base_logits)

    trainable = [n for n, p in st.named_parameters() if p.requires_grad]
    assert trainable == ["att_shift", "wkv_state", "ffn_shift"]
    st.train()
    ids = _batch(0)
    st(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in st.trainable_parameters())
    st.zero_grad()

    # the held-out loss on v7 only (the runs are the slow part); two steps on v5/v6
    before = _val_loss(st)
    _train(st, st.trainable_parameters(), steps=STEPS if version == 7 else 2, lr=5e-2)
    if version == 7:
        after = _val_loss(st)
        assert after < before - 0.02, (before, after)
    with torch.no_grad():
        tuned = st(input_ids=probe).logits
    assert not torch.equal(tuned, base_logits)

    path = st.save_state(str(tmp_path / "state"))
    cfg = model.config
    payload = 4 * cfg.num_hidden_layers * (2 * cfg.hidden_size + cfg.num_heads * cfg.head_size ** 2)
    size = os.path.getsize(path)
    assert payload <= size <= payload + 1024  # fp32 states plus a small header
    assert size / cfg.num_hidden_layers < 3 * 1024  # a few KB per layer at this size

    fresh = tiny_model(version)
    reloaded = StateTuningModel.from_pretrained(fresh, str(tmp_path / "state")).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=probe).logits, tuned)
        gen_tuned = st.generate(probe[:, :8], max_new_tokens=4, attention_mask=torch.ones(2, 8, dtype=torch.long))
        gen_reloaded = reloaded.generate(probe[:, :8], max_new_tokens=4,
                                         attention_mask=torch.ones(2, 8, dtype=torch.long))
    assert torch.equal(gen_tuned, gen_reloaded)


def test_state_tuning_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="v5.2, v6 and v7"):
        add_state_tuning(tiny_model(4))
    path = add_state_tuning(tiny_model(7)).save_state(str(tmp_path / "s7"))
    with pytest.raises(ValueError, match="rwkv_hf_v7 model; this model is rwkv_hf_v6"):
        add_state_tuning(tiny_model(6)).load_state(path)
    with pytest.raises(ValueError, match="hidden_size=32.*hidden_size=48"):
        add_state_tuning(tiny_model(7, hidden_size=48, intermediate_size=64)).load_state(path)
    with pytest.raises(FileNotFoundError):
        add_state_tuning(tiny_model(7)).load_state(str(tmp_path / "nowhere"))
