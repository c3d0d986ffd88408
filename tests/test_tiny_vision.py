"""The shipped tiny Vision-RWKVs (VRWKV, VRWKV6): load through the image-classification
pipeline and reproduce their recorded held-out accuracy; the held-out set is scikit-learn's
digits."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, pipeline

import rwkv_hf  # noqa: F401
from rwkv_hf.cli import main
from rwkv_hf.pretrained import tiny_vision_model_path



def _heldout(version=4):
    data = load_file(os.path.join(tiny_vision_model_path(version), "heldout.safetensors"))
    return data["images"], data["labels"], data["indices"]


@pytest.mark.parametrize("version", [4, 6])
def test_pipeline_reproduces_the_recorded_heldout_accuracy(version):
    path = tiny_vision_model_path(version)
    images, labels, _ = _heldout(version)
    with open(os.path.join(path, "eval.json")) as f:
        recorded = json.load(f)["heldout_accuracy"]
    classify = pipeline("image-classification", model=path, device="cpu")
    tops = classify([Image.fromarray(im.numpy()).convert("RGB") for im in images], top_k=1, batch_size=64)
    acc = float(np.mean([int(t[0]["label"]) == y for t, y in zip(tops, labels.tolist())]))
    assert acc == recorded and acc >= 0.97, acc
    model = AutoModelForImageClassification.from_pretrained(path)
    assert model.config.model_type == ("rwkv_hf_vrwkv6" if version == 6 else "rwkv_hf_vrwkv")
    assert model.config.id2label[7] == "7"


def test_heldout_images_are_sklearn_digits_not_seen_in_training():
    from sklearn.datasets import load_digits

    images, labels, indices = _heldout()
    for name, tensor in zip(("images", "labels", "indices"), _heldout(6)):  # one split for both
        assert torch.equal(tensor, {"images": images, "labels": labels, "indices": indices}[name])
    d = load_digits()
    idx = indices.numpy()
    assert np.array_equal(labels.numpy(), d.target[idx])
    assert np.array_equal(images.numpy(), np.round(d.images[idx] * (255 / 16)).astype(np.uint8))
    assert len(set(idx.tolist())) == len(idx) == 359  # 20% of each class
    counts = np.bincount(labels.numpy(), minlength=10)
    assert counts.min() >= 35


def test_demo_vision(capsys):
    assert main(["demo", "--vision"]) == 0
    out = capsys.readouterr().out
    assert "pipeline('image-classification')" in out and "accuracy 99.16%" in out and "accuracy 98.61%" in out
