"""The shipped tiny Vision-RWKV: loads through the image-classification pipeline and
reproduces its recorded held-out accuracy; its held-out set is scikit-learn's digits."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, pipeline

import rwkv_hf  # noqa: F401
from rwkv_hf.cli import main
from rwkv_hf.pretrained import tiny_vision_model_path

PATH = tiny_vision_model_path()


def _heldout():
    data = load_file(os.path.join(PATH, "heldout.safetensors"))
    return data["images"], data["labels"], data["indices"]


def test_pipeline_reproduces_the_recorded_heldout_accuracy():
    images, labels, _ = _heldout()
    with open(os.path.join(PATH, "eval.json")) as f:
        recorded = json.load(f)["heldout_accuracy"]
    classify = pipeline("image-classification", model=PATH, device="cpu")
    tops = classify([Image.fromarray(im.numpy()).convert("RGB") for im in images], top_k=1, batch_size=64)
    acc = float(np.mean([int(t[0]["label"]) == y for t, y in zip(tops, labels.tolist())]))
    assert acc == recorded and acc >= 0.97, acc
    model = AutoModelForImageClassification.from_pretrained(PATH)
    assert model.config.model_type == "rwkv_hf_vrwkv" and model.config.id2label[7] == "7"


def test_heldout_images_are_sklearn_digits_not_seen_in_training():
    from sklearn.datasets import load_digits

    images, labels, indices = _heldout()
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
    assert "pipeline('image-classification')" in out and "accuracy 99.16%" in out
