"""RWKV language models v4-v7: forward/cache equivalence, generation, padding, save/load,
training, registration and input checks."""
import copy
import os
import subprocess
import sys

import pytest
import torch
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification,
                          DynamicCache)

import rwkv_hf  # noqa: F401  (registers the models)
from rwkv_hf.lm import RWKV_LM_CLASSES
from lm_utils import VERSIONS, VOCAB, rel_err, tiny_config, tiny_model

torch.set_num_threads(2)


def _ids(b, t, seed=1):
    return torch.randint(1, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- forward / cache


@pytest.mark.parametrize("version", VERSIONS)
def test_token_by_token_equals_full_forward(version):
    model = tiny_model(version)
    ids = _ids(2, 23)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :1])
        steps = [out.logits]
        for t in range(1, ids.shape[1]):
            out = model(ids[:, t:t + 1], cache=out.cache)
            steps.append(out.logits)
    assert rel_err(torch.cat(steps, 1), full) <= 1e-5


@pytest.mark.parametrize("version", VERSIONS)
def test_chunked_prefill_equals_full_forward(version):
    model = tiny_model(version)
    ids = _ids(3, 150)  # longer than the torch backends' chunk length
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :67])
        second = model(ids[:, 67:], cache=first.cache)
    assert rel_err(torch.cat([first.logits, second.logits], 1), full) <= 1e-5


@pytest.mark.parametrize("version", VERSIONS)
def test_fp32_model_matches_float64_reference_backend(version, monkeypatch):
    model = tiny_model(version)
    ids = _ids(2, 40)
    with torch.no_grad():
        fast = model(ids).logits
        monkeypatch.setenv("RWKV_HF_WKV_BACKEND", "reference")
        exact = model.double()(ids).logits
    assert rel_err(fast, exact) <= 1e-5


def test_v4_matches_transformers_rwkv():
    """transformers' own RwkvForCausalLM (an implementation not written here) on the same weights."""
    from transformers import RwkvConfig, RwkvForCausalLM

    ours = tiny_model(4)
    cfg = ours.config
    theirs = RwkvForCausalLM(RwkvConfig(vocab_size=VOCAB, hidden_size=cfg.hidden_size,
                                        num_hidden_layers=cfg.num_hidden_layers,
                                        intermediate_size=cfg.intermediate_size, rescale_every=0)).eval()
    names = {"model.embeddings": "rwkv.embeddings", "model.ln_out": "rwkv.ln_out", "model.blocks": "rwkv.blocks",
             ".ln0.": ".pre_ln.", ".attn.": ".attention.", ".ffn.": ".feed_forward.",
             "time_mix_k": "time_mix_key", "time_mix_v": "time_mix_value", "time_mix_r": "time_mix_receptance"}
    state = {}
    for key, value in ours.state_dict().items():
        for a, b in names.items():
            key = key.replace(a, b)
        target = theirs.state_dict()[key]
        state[key] = value.reshape(target.shape)
    theirs.load_state_dict(state, strict=True)
    ids = _ids(1, 20)
    with torch.no_grad():
        assert rel_err(ours(ids).logits, theirs(ids).logits) <= 1e-5


# --------------------------------------------------------------------------- generation


def _no_eos(model):
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def _argmax_rollout(model, ids, steps):
    with torch.no_grad():
        for _ in range(steps):
            nxt = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
    return ids


@pytest.mark.parametrize("version", VERSIONS)
def test_greedy_generate_equals_argmax_rollout(version):
    model = _no_eos(tiny_model(version))
    ids = _ids(2, 7)
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(out, _argmax_rollout(model, ids, 12))


@pytest.mark.parametrize("version", VERSIONS)
def test_left_padded_batch_generates_like_each_prompt_alone(version):
    model = _no_eos(tiny_model(version))
    prompts = [_ids(1, n, seed=n)[0] for n in (3, 9, 6)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = p
        mask[i, width - len(p):] = 1
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)[:, width:]
    no_cache = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(no_cache[:, width:], batch)
    for i, p in enumerate(prompts):
        alone = model.generate(p[None], max_new_tokens=8, do_sample=False)[0, len(p):]
        assert torch.equal(batch[i], alone), (version, i)


@pytest.mark.parametrize("version", VERSIONS)
def test_left_padded_logits_equal_unpadded(version):
    model = tiny_model(version)
    ids = _ids(1, 10)
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones_like(ids)], 1)
    with torch.no_grad():
        assert rel_err(model(padded, attention_mask=mask).logits[:, 5:], model(ids).logits) <= 1e-5


@pytest.mark.parametrize("version", (4, 7))
def test_beam_search_and_sampling(version):
    model = _no_eos(tiny_model(version))
    ids = _ids(2, 5)
    kw = dict(max_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False)
    with_cache = model.generate(ids, **kw)
    without_cache = model.generate(ids, use_cache=False, **kw)  # recomputes everything: no reorder_cache
    assert with_cache.shape == (4, 11)
    assert torch.equal(with_cache, without_cache)
    torch.manual_seed(3)
    a = model.generate(ids, max_new_tokens=6, do_sample=True, top_k=20, num_return_sequences=3)
    torch.manual_seed(3)
    b = model.generate(ids, max_new_tokens=6, do_sample=True, top_k=20, num_return_sequences=3)
    assert a.shape == (6, 11) and torch.equal(a, b)


@pytest.mark.parametrize("version", VERSIONS)
def test_state_in_and_out_continues_a_conversation(version):
    model = _no_eos(tiny_model(version))
    first, second = _ids(1, 8, seed=5), _ids(1, 4, seed=6)
    out = model.generate(first, max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
    cache = out.cache if "cache" in out else out.past_key_values
    assert isinstance(cache, DynamicCache)
    # The cache covers everything but the last generated token: feed it with the new turn.
    turn = torch.cat([out.sequences[:, -1:], second], 1)
    continued = model.generate(turn, cache=cache, max_new_tokens=6, do_sample=False)[:, turn.shape[1]:]
    whole = torch.cat([out.sequences, second], 1)
    reference = model.generate(whole, max_new_tokens=6, do_sample=False)[:, whole.shape[1]:]
    assert torch.equal(continued, reference)


# --------------------------------------------------------------------------- save / load / auto


@pytest.mark.parametrize("version", VERSIONS)
def test_save_load_round_trip_through_auto_classes(version, tmp_path):
    model = tiny_model(version)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is RWKV_LM_CLASSES[version][0] and config.model_type == f"rwkv_hf_v{version}"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is RWKV_LM_CLASSES[version][1]
    assert all(torch.equal(v, sd["model." + k]) for k, v in base.state_dict().items())
    gen = loaded.generation_config
    assert gen.do_sample is False and gen.eos_token_id == 0


def test_bf16_and_device_map_auto_load(tmp_path):
    from accelerate import infer_auto_device_map

    model = tiny_model(7)
    model.save_pretrained(tmp_path)
    bf16 = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    ids = _ids(1, 12)
    with torch.no_grad():
        assert rel_err(bf16(ids).logits.float(), model(ids).logits) < 0.05
    v6 = tiny_model(6)
    v6.save_pretrained(tmp_path / "v6")
    v6_bf16 = AutoModelForCausalLM.from_pretrained(tmp_path / "v6", dtype=torch.bfloat16)
    attn = v6_bf16.model.blocks[0].attn
    assert attn.time_decay.dtype == attn.time_faaaa.dtype == torch.float32  # decays stay fp32
    assert attn.key.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert rel_err(v6_bf16(ids).logits.float(), v6(ids).logits) < 0.05
    mapped = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="auto")
    with torch.no_grad():
        assert torch.equal(mapped(ids).logits, model(ids).logits)
    # A memory budget that cannot hold the model on one device: blocks stay whole.
    deep = tiny_model(7, num_hidden_layers=4)
    size = sum(p.numel() * 4 for p in deep.parameters())
    device_map = infer_auto_device_map(deep, max_memory={"cpu": size // 2, "disk": 10 * size},
                                       no_split_module_classes=deep._no_split_modules)
    for name in device_map:
        parts = name.split(".")
        assert not (len(parts) > 3 and parts[1] == "blocks"), f"block split: {name}"
    assert set(device_map.values()) == {"cpu", "disk"}


@pytest.mark.parametrize("version", VERSIONS)
def test_sequence_classification(version, tmp_path):
    model = tiny_model(version, kind="seq", num_labels=3)
    ids = _ids(2, 9)
    padded = torch.cat([torch.zeros(2, 4, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(2, 4, dtype=torch.long), torch.ones_like(ids)], 1)
    with torch.no_grad():
        logits = model(ids).logits
        assert logits.shape == (2, 3)
        assert rel_err(model(padded, attention_mask=mask).logits, logits) <= 1e-5
        right = torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], 1)
        assert rel_err(model(right, attention_mask=mask.flip(1)).logits, logits) <= 1e-5
    out = model(ids, labels=torch.tensor([0, 2]))
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 2])))
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, logits)


def test_import_next_to_flash_linear_attention_in_either_order():
    code = {
        "fla first": "import fla.models, rwkv_hf",
        "rwkv_hf first": "import rwkv_hf, fla.models",
    }
    check = ("; from transformers import AutoConfig, AutoModelForCausalLM; "
             "assert type(AutoConfig.for_model('rwkv_hf_v7')).__name__ == 'RwkvV7Config'; "
             "assert type(AutoConfig.for_model('rwkv7')).__module__.startswith('fla')")
    for what, imports in code.items():
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        proc = subprocess.run([sys.executable, "-c", imports + check], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, (what, proc.stderr[-2000:])


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("version", VERSIONS)
def test_labels_give_the_shifted_loss_and_gradients_flow(version):
    model = tiny_model(version).train()
    ids = _ids(2, 12)
    labels = ids.clone()
    labels[0, :3] = -100
    out = model(ids, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, expected, rtol=1e-6)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


@pytest.mark.parametrize("version", VERSIONS)
def test_gradient_checkpointing_gives_the_same_gradients(version):
    model = tiny_model(version).train()
    ids = _ids(2, 20)
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert torch.allclose(grads[1][name], g, rtol=1e-5, atol=1e-7), name


def test_bf16_autocast_training_step():
    model = tiny_model(7).train()
    ids = _ids(2, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(ids, labels=ids).loss
    loss.backward()
    ref = model(ids, labels=ids).loss
    assert torch.isfinite(loss) and abs(loss.item() - ref.item()) < 0.05 * ref.item()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_trainer_runs_and_lowers_the_loss(tmp_path):
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainingArguments

    class Repeating(Dataset):  # a learnable pattern
        def __len__(self):
            return 32

        def __getitem__(self, i):
            ids = torch.arange(i, i + 24) % 7 + 1
            return {"input_ids": ids, "labels": ids}

    model = tiny_model(7, seed=2).train()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=30,
                             learning_rate=3e-3, logging_steps=5, save_strategy="no", report_to=[],
                             use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Repeating())
    before = trainer.evaluate(Repeating())["eval_loss"]
    trainer.train()
    after = trainer.evaluate(Repeating())["eval_loss"]
    assert after < 0.5 * before


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("version", VERSIONS)
def test_bad_input_errors_name_the_value(version):
    model = tiny_model(version)
    with pytest.raises(ValueError, match=f"Token id {VOCAB}"):
        model(torch.tensor([[1, VOCAB]]))
    with pytest.raises(ValueError, match="Token id -1"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="non-empty"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(_ids(1, 4), attention_mask=torch.ones(1, 5, dtype=torch.long))


def test_a_state_of_another_version_or_size_is_refused():
    ids = _ids(1, 4)
    with torch.no_grad():
        v4_cache = tiny_model(4)(ids).cache
        v7_cache = tiny_model(7)(ids).cache
        with pytest.raises(ValueError, match=r"WKV state has shape \(1, 3, 32\).*RWKV-7"):
            tiny_model(7)(ids, cache=v4_cache)
        with pytest.raises(ValueError, match="2 layers, this model 3"):
            tiny_model(7, num_hidden_layers=3)(ids, cache=copy.deepcopy(v7_cache))
        with pytest.raises(ValueError, match="expects"):
            tiny_model(7)(_ids(2, 4), cache=v7_cache)  # batch size 1 state, batch of 2
        with pytest.raises(ValueError, match="Cache"):
            tiny_model(7)(ids, cache=[torch.zeros(1)])


def test_inconsistent_config_is_refused():
    with pytest.raises(ValueError, match="hidden_size=100 is not divisible by head_size=64"):
        tiny_config(7, hidden_size=100, head_size=64)
    with pytest.raises(ValueError, match="num_hidden_layers"):
        tiny_config(5, num_hidden_layers=0)
    tiny_config(4, hidden_size=100)  # v4 has no heads


@pytest.mark.parametrize("version,vocab,tokenizer", [(7, 65536, "RwkvWorldTokenizer"), (4, 50277, "GPTNeoXTokenizer")])
def test_saved_folder_carries_the_tokenizer_of_a_known_vocabulary(version, vocab, tokenizer, tmp_path):
    from transformers import AutoTokenizer

    model = tiny_model(version, vocab_size=vocab, hidden_size=16, head_size=16, intermediate_size=16,
                       num_hidden_layers=1)
    model.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert type(tok).__name__ == tokenizer and tok.eos_token_id == 0
    ids = tok("Hello world", return_tensors="pt").input_ids
    with torch.no_grad():
        assert AutoModelForCausalLM.from_pretrained(tmp_path)(ids).logits.shape == (1, ids.shape[1], vocab)


def test_other_vocabulary_saves_without_a_tokenizer_and_says_so(tmp_path, caplog):
    import logging

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_info()
    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.INFO):
            tiny_model(7).save_pretrained(tmp_path)
    finally:
        hf_logging.disable_propagation()
        hf_logging.set_verbosity_warning()
    assert f"No tokenizer known for vocab_size={VOCAB}" in caplog.text
    assert not (tmp_path / "tokenizer_config.json").exists()
    AutoModelForCausalLM.from_pretrained(tmp_path)  # the model itself loads
    with pytest.raises(Exception):
        AutoTokenizer.from_pretrained(tmp_path)


def test_tied_embeddings_save_and_load_tied(tmp_path):
    model = tiny_model(7, tie_word_embeddings=True)
    assert model.head.weight is model.model.embeddings.weight
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.head.weight is loaded.model.embeddings.weight
    assert torch.equal(loaded.head.weight, model.head.weight)
    ids = _ids(1, 6)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
