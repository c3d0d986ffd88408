"""Model cards (rwkv_hf.model_card): metadata, model-index and body, for the language-model and
Vision-RWKV templates.

Hub-side validation (``ModelCard.validate``) posts the card to the Hub's /api/validate-yaml: the
test here runs it against tests/hub_server.py's LocalHub, which accepts every card, so it only
proves the call path. What is checked offline: the metadata round-trips through huggingface_hub's
own ModelCardData / ModelCard.load, and the model-index parses back (model_index_to_eval_results)
to the numbers given.
"""
import os
from types import SimpleNamespace

import pytest
import torch

import huggingface_hub
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

import rwkv_hf  # noqa: F401  (registers the model types)
from rwkv_hf.lm import RwkvV4Config, RwkvV7Config, RwkvV7ForCausalLM
from rwkv_hf.model_card import eval_results_from_json, model_card, write_model_card
from rwkv_hf.pretrained import tiny_model_path, tiny_vision_model_path
from rwkv_hf.vision import Vrwkv6Config, VrwkvConfig, VrwkvForImageClassification, VrwkvModel

DIGITS = [{"task_type": "image-classification", "dataset_type": "digits",
           "dataset_name": "sklearn digits (held-out 20%)", "metric_type": "accuracy", "metric_value": 0.9916}]


def lm_config():
    return RwkvV7Config(vocab_size=97, hidden_size=64, head_size=32, num_hidden_layers=2)


def vision_config(**kw):
    return VrwkvConfig(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_labels=10, **kw)


def roundtrip(card, tmp_path):
    """The card's metadata dict, after checking that a save + ModelCard.load and huggingface_hub's
    own ModelCardData reproduce it."""
    data = card.data.to_dict()
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.to_dict() == data and loaded.text == card.text
    assert ModelCardData(**data).to_dict() == data
    return data


def test_lm_card_from_config(tmp_path):
    config = lm_config()
    card = model_card(config)
    data = roundtrip(card, tmp_path)
    assert data == {"library_name": "transformers", "pipeline_tag": "text-generation",
                    "tags": ["rwkv", "rwkv-v7", "rwkv_hf"]}  # no licence, model-index, ... when not given
    params = sum(p.numel() for p in RwkvV7ForCausalLM(config).parameters())
    for text in ("# RWKV-7 142.02K", "| RWKV version | 7 |", "| layers | 2 |", "| width (hidden size) | 64 |",
                 "| heads x head size | 2 x 32 |", "| vocabulary | 97 |", f"| parameters | {params:,} (",
                 'from_pretrained("path/to/this/folder")', "License: not stated."):
        assert text in card.text, text
    assert "## Evaluation" not in card.text and "converted from" not in card.text


def test_lm_card_with_eval_results_and_metadata(tmp_path):
    results = eval_results_from_json(tiny_model_path())
    card = model_card(lm_config(), eval_results=results, repo_id="test-user/tiny-rwkv7", license="apache-2.0",
                      base_model="BlinkDL/rwkv-7-world", datasets="test-user/pydoc", tags=["tiny"], tokenizer=True,
                      notes="Trained in *six* minutes.")
    data = roundtrip(card, tmp_path)
    assert data["license"] == "apache-2.0" and data["base_model"] == "BlinkDL/rwkv-7-world"
    assert data["datasets"] == ["test-user/pydoc"] and data["tags"][-1] == "tiny"
    assert data["metrics"] == ["bits_per_byte", "perplexity"]
    name, parsed = model_index_to_eval_results(data["model-index"])
    assert name == "tiny-rwkv7"
    assert [(r.metric_type, r.metric_value) for r in parsed] == [
        ("perplexity", 11.052516847352974), ("bits_per_byte", 0.90147882246956)]
    assert eval_results_to_model_index(name, parsed) == data["model-index"]
    for text in ("# tiny-rwkv7", "## Evaluation", "| validation | perplexity | 11.05 |", "| bits per byte | 0.9015 |",
                 'AutoTokenizer.from_pretrained("test-user/tiny-rwkv7")', "| tokenizer | included |",
                 "[BlinkDL/rwkv-7-world](https://huggingface.co/BlinkDL/rwkv-7-world)", "Trained in *six* minutes.",
                 "License: apache-2.0."):
        assert text in card.text, text


def test_vision_card_with_and_without_eval_results(tmp_path):
    plain = model_card(vision_config())
    data = roundtrip(plain, tmp_path)
    assert data["pipeline_tag"] == "image-classification" and "model-index" not in data
    assert data["tags"] == ["rwkv", "vision-rwkv", "vrwkv", "rwkv_hf", "timm"]
    params = sum(p.numel() for p in VrwkvForImageClassification(vision_config()).parameters())
    for text in ("# Vision-RWKV 31.40K", "bidirectional RWKV-4", "| blocks | 2 |", "| width (hidden size) | 32 |",
                 "| patch size | 4 |", "| position-embedding grid | 8x8 ", "| classes | 10 |",
                 f"| parameters | {params:,} (",
                 'pipeline("image-classification", model="path/to/this/folder")'):
        assert text in plain.text, text

    card = model_card(vision_config(), eval_results=DIGITS, license="apache-2.0")
    data = roundtrip(card, tmp_path)
    name, parsed = model_index_to_eval_results(data["model-index"])
    assert name == "Vision-RWKV 31.40K"  # no repo id: the derived name
    assert parsed == [EvalResult(**DIGITS[0])]
    assert "| image-classification | sklearn digits (held-out 20%) |  | accuracy | 0.9916 |" in card.text
    # EvalResult objects are taken as they are
    assert model_card(vision_config(), eval_results=parsed).data.eval_results == parsed


def test_vision_backbones_and_vrwkv6(tmp_path):
    config = Vrwkv6Config(image_size=32, patch_size=4, hidden_size=64, head_size=16, num_hidden_layers=4,
                          architectures=["Vrwkv6Backbone"])
    card = model_card(config, repo_id="test-user/v6")
    data = roundtrip(card, tmp_path)
    assert data["pipeline_tag"] == "image-feature-extraction" and "vrwkv6" in data["tags"]
    assert "4 heads of 16" in card.text and "| classes | none (backbone) |" in card.text
    assert 'AutoBackbone.from_pretrained("test-user/v6", out_indices=[1, 2, 3, 4])' in card.text
    base = model_card(VrwkvModel(vision_config()))  # a model: its class decides
    assert base.data.pipeline_tag == "image-feature-extraction" and "| weights dtype | float32 |" in base.text
    seq = model_card(RwkvV4Config(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                  architectures=["RwkvV4ForSequenceClassification"]))
    assert seq.data.pipeline_tag == "text-classification" and "n/a (RWKV-4" in seq.text


def test_converter_source_section():
    card = model_card(lm_config(), source=dict(name="x.pth", layout="BlinkDL .pth (RWKV-7)",
                                                discarded=["blocks.0.att.v0"]), tokenizer=False)
    for text in ("# RWKV-7 142.02K (converted from x.pth)", "| converted from | BlinkDL .pth (RWKV-7) (`x.pth`) |",
                 "## Conversion", "blinkdl_unused.safetensors", "blocks.0.att.v0", "| tokenizer | not included |",
                 "License: unknown (not stated by the source)"):
        assert text in card.text, text


def test_write_model_card(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    torch.manual_seed(0)
    model = RwkvV7ForCausalLM(lm_config())
    path = write_model_card(model, tmp_path, license="mit")
    assert path == os.path.join(tmp_path, "README.md")
    card = ModelCard.load(path)
    assert card.data.license == "mit" and "| tokenizer | included |" in card.text
    assert write_model_card(model, tmp_path) is None  # an existing README.md is kept
    assert ModelCard.load(path).data.license == "mit"


def test_shipped_tiny_vision_model():
    from transformers import AutoModelForImageClassification

    folder = tiny_vision_model_path()
    before = os.stat(os.path.join(folder, "README.md")).st_mtime_ns
    model = AutoModelForImageClassification.from_pretrained(folder)
    results = eval_results_from_json(folder)
    card = model_card(model, eval_results=results, repo_id="test-user/tiny-vrwkv-digits", datasets="sklearn-digits")
    assert "| parameters | 223,946 (223.95K) |" in card.text and "| 0.9916 |" in card.text
    assert model_index_to_eval_results(card.data.to_dict()["model-index"])[1][0].metric_value == 0.9916434540389972
    assert write_model_card(model, folder) is None
    assert os.stat(os.path.join(folder, "README.md")).st_mtime_ns == before


def test_bad_input():
    with pytest.raises(ValueError, match="no model card template"):
        model_card(SimpleNamespace(model_type="gpt2"))
    with pytest.raises(ValueError, match="bad evaluation result"):
        model_card(lm_config(), eval_results=[{"task_type": "text-generation", "metric_value": 1.0}])
    with pytest.raises(ValueError, match="eval.json"):
        eval_results_from_json(os.path.join(tiny_model_path(), "config.json"))


def test_validate_against_local_hub(monkeypatch, tmp_path):
    # LocalHub answers every /api/validate-yaml with "valid": this proves the call path only.
    from hub_server import LocalHub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with LocalHub(tmp_path / "hub") as hub:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
        model_card(vision_config(), eval_results=DIGITS, repo_id="test-user/tiny").validate()
    assert ("POST", "/api/validate-yaml") in hub.requests
