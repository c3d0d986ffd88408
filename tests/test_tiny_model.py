"""The shipped tiny RWKV-7 (rwkv_hf/pretrained/tiny-rwkv7-pydoc): it loads through the
Auto classes, its validation numbers reproduce eval.json, it beats a unigram model by
a wide margin, and greedy generation is deterministic text."""
import json
import math
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import rwkv_hf  # noqa: F401  (Auto registration)
from rwkv_hf.pretrained import corpus, tiny_model_path

PATH = tiny_model_path()


@pytest.fixture(scope="module")
def shipped():
    with open(os.path.join(PATH, "eval.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(PATH).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(PATH)


@pytest.fixture(scope="module")
def val(model, tokenizer, shipped):
    return corpus.evaluate(model, tokenizer, "val", ctx_len=shipped["eval_ctx_len"])


def test_folder_is_complete_and_small():
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "eval.json", "README.md"):
        assert os.path.isfile(os.path.join(PATH, name)), name
    assert os.path.getsize(os.path.join(PATH, "model.safetensors")) <= 8.5e6


def test_loads_as_rwkv7_with_consistent_special_tokens(model, tokenizer):
    assert type(model).__name__ == "RwkvV7ForCausalLM"
    assert model.config.model_type == "rwkv_hf_v7"
    assert len(tokenizer) == model.config.vocab_size
    assert tokenizer.convert_tokens_to_ids(corpus.EOT) == 0
    assert tokenizer.eos_token_id == tokenizer.bos_token_id == tokenizer.pad_token_id == 0
    assert model.config.eos_token_id == model.config.bos_token_id == model.config.pad_token_id == 0
    assert model.generation_config.eos_token_id == 0 and not model.generation_config.do_sample


def test_split_is_fixed_and_disjoint(shipped):
    train, val = corpus.split_topics()
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(corpus.topics())
    assert val == shipped["val_topics"]
    assert 0.05 <= len(val) / (len(train) + len(val)) <= 0.12


def test_validation_perplexity_matches_eval_json(val, shipped):
    if corpus.corpus_fingerprint("val") != shipped["corpus"]["val_sha256"]:
        pytest.skip(f"this Python's pydoc_data text differs from the training one "
                    f"(Python {shipped['corpus']['python']})")
    ref = shipped["validation"]
    assert val["tokens"] == ref["tokens"] and val["bytes"] == ref["bytes"]
    assert val["perplexity"] == pytest.approx(ref["perplexity"], rel=1e-3)
    assert val["bits_per_byte"] == pytest.approx(ref["bits_per_byte"], rel=1e-3)


def test_far_better_than_unigram_baseline(val, model, tokenizer):
    baseline = corpus.unigram_baseline(tokenizer, model.config.vocab_size)
    assert math.isfinite(val["perplexity"])
    assert val["perplexity"] < 0.25 * baseline, (val["perplexity"], baseline)
    assert val["bits_per_byte"] < 3.0


def test_greedy_generation_is_deterministic_text(model, tokenizer):
    ids = tokenizer(tokenizer.bos_token + "A class definition", return_tensors="pt").input_ids
    with torch.no_grad():
        a = model.generate(ids, max_new_tokens=24, do_sample=False)
        b = model.generate(ids, max_new_tokens=24, do_sample=False)
    assert torch.equal(a, b)
    assert a.shape[1] > ids.shape[1]
    text = tokenizer.decode(a[0, ids.shape[1]:], skip_special_tokens=True)
    assert text.strip() and "\ufffd" not in text
    # greedy decoding (recurrent, token by token) is the argmax of one parallel forward pass
    with torch.no_grad():
        logits = model(a[:, :-1]).logits[0, ids.shape[1] - 1:]
    agree = (logits.argmax(-1) == a[0, ids.shape[1]:]).float().mean().item()
    assert agree >= 0.9, agree  # allows a rare near-tie flip between the two numerical paths


def test_demo_lm_reports_the_cpu_path(capsys, monkeypatch):
    from rwkv_hf.cli import main

    assert main(["demo", "--lm", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "CPU inference: fused blocks" in out and "perplexity 11.05" in out
    monkeypatch.setenv("RWKV_HF_LM_FUSED", "0")
    assert main(["demo", "--lm", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "CPU inference: eager blocks (turned off by RWKV_HF_LM_FUSED=0)" in out and "perplexity 11.05" in out
