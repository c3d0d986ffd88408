"""The shipped tiny image models: the Vision-RWKVs (VRWKV, VRWKV6) load through the
image-classification pipeline and reproduce their recorded held-out accuracy on scikit-learn's
digits; the Restore-RWKV denoiser reproduces its recorded held-out PSNR on a crop of
scikit-learn's flower.jpg, well above the best Gaussian blur."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, AutoModelForImageToImage, pipeline

import rwkv_hf  # noqa: F401
from rwkv_hf.cli import main
from rwkv_hf.pretrained import (DIGIT_WORDS, tiny_clip_model_path, tiny_point_model_path, tiny_restore_model_path,
                                tiny_vision_model_path)
from rwkv_hf.pretrained.denoise import denoise_baselines, gaussian_blur, psnr



MIN_GAIN_OVER_BLUR_DB = 1.0  # the shipped denoiser's margin over the best Gaussian blur


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


def test_tiny_clip_zero_shot_pipeline_reproduces_its_recorded_accuracy():
    """The held-out digits through pipeline("zero-shot-image-classification") with the
    captions of a training template and of one never seen in training: the accuracies
    eval.json recorded (well above chance, 10 %)."""
    path = tiny_clip_model_path()
    with open(os.path.join(path, "eval.json")) as f:
        recorded = json.load(f)
    data = load_file(os.path.join(path, "heldout.safetensors"))
    images, _, indices = _heldout()
    assert torch.equal(data["indices"], indices) and torch.equal(data["images"], images)  # the same split
    classify = pipeline("zero-shot-image-classification", model=path, device="cpu")
    pil = [Image.fromarray(im.numpy()).convert("RGB") for im in data["images"]]
    for kind, key, floor in (("seen", "zero_shot_accuracy", 0.95),
                             ("unseen", "zero_shot_accuracy_unseen_template", 0.9)):
        tops = classify(pil, candidate_labels=DIGIT_WORDS, hypothesis_template=recorded["templates"][kind],
                        batch_size=64)
        correct = sum(DIGIT_WORDS.index(t[0]["label"]) == y for t, y in zip(tops, data["labels"].tolist()))
        n = len(pil)
        assert correct == round(recorded[key] * n) and correct >= floor * n, (kind, correct, n)


def test_demo_vision(capsys):
    assert main(["demo", "--vision"]) == 0
    out = capsys.readouterr().out
    assert "pipeline('image-classification')" in out and "accuracy 99.16%" in out and "accuracy 98.61%" in out
    with open(os.path.join(tiny_clip_model_path(), "eval.json")) as f:
        zero_shot = json.load(f)["zero_shot_accuracy"]
    assert "pipeline('zero-shot-image-classification')" in out and f"accuracy {100 * zero_shot:.2f}%" in out
    with open(os.path.join(tiny_restore_model_path(), "eval.json")) as f:
        recorded = json.load(f)["heldout_psnr_db"]
    assert "AutoModelForImageToImage" in out and f"PSNR {recorded:.2f} dB" in out
    with open(os.path.join(tiny_point_model_path("classify"), "eval.json")) as f:
        accuracy = json.load(f)["heldout_accuracy"]
    with open(os.path.join(tiny_point_model_path("segment"), "eval.json")) as f:
        miou = json.load(f)["heldout_instance_miou"]
    assert "PointRwkvForPointCloudClassification" in out and f"accuracy {100 * accuracy:.2f}% (" in out
    assert "PointRwkvForPointCloudSegmentation" in out and f"instance mIoU {100 * miou:.2f}% (" in out


def _restore_heldout():
    data = load_file(os.path.join(tiny_restore_model_path(), "heldout.safetensors"))
    return data["clean"].float() / 255, data["noisy"]


def test_tiny_denoiser_reproduces_its_recorded_psnr_and_beats_the_best_blur():
    path = tiny_restore_model_path()
    with open(os.path.join(path, "eval.json")) as f:
        recorded = json.load(f)
    model = AutoModelForImageToImage.from_pretrained(path).eval()
    assert model.config.model_type == "rwkv_hf_restore_rwkv"
    clean, noisy = _restore_heldout()
    with torch.no_grad():
        score = psnr(model(noisy).reconstruction, clean)
    base = denoise_baselines(noisy, clean)
    assert abs(score - recorded["heldout_psnr_db"]) < 2e-3, (score, recorded)
    assert abs(base["best_blur_psnr_db"] - recorded["best_blur_psnr_db"]) < 2e-3
    assert score > base["best_blur_psnr_db"] + MIN_GAIN_OVER_BLUR_DB > base["noisy_psnr_db"], (score, base)


def test_denoiser_heldout_is_the_flower_crop_with_seeded_noise():
    from sklearn.datasets import load_sample_images

    clean, noisy = _restore_heldout()
    data = load_sample_images()
    flower = data.images[[os.path.basename(f) for f in data.filenames].index("flower.jpg")]
    luma = torch.from_numpy(flower.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255)
    s = clean.shape[-1]
    top, left = (luma.shape[0] - s) // 2, (luma.shape[1] - s) // 2
    assert torch.equal(clean[0, 0], (luma[top:top + s, left:left + s] * 255).round() / 255)
    noise = (25 / 255) * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy, clean + noise)


def test_gaussian_blur_baseline_matches_torchvision():
    from torchvision.transforms.functional import gaussian_blur as tv_blur

    image = torch.rand(1, 1, 40, 50, generator=torch.Generator().manual_seed(0))
    for sigma in (0.5, 1.3, 2.0):
        radius = max(1, int(np.ceil(3 * sigma)))
        want = tv_blur(image, [2 * radius + 1] * 2, [sigma, sigma])
        assert (gaussian_blur(image, sigma) - want).abs().max() < 1e-6
