"""Small models this project trains itself, shipped with the package.

``tiny-rwkv7-pydoc/`` is a tiny RWKV-7 language model trained by
``examples/train_tiny_lm.py`` on the CPython reference documentation that ships with
Python (``pydoc_data.topics``); :mod:`rwkv_hf.pretrained.corpus` rebuilds its
train/validation split. Load it with :func:`tiny_model_path`::

    from transformers import AutoModelForCausalLM, AutoTokenizer
    import rwkv_hf
    from rwkv_hf.pretrained import tiny_model_path

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path())

``tiny-vrwkv-digits/`` and ``tiny-vrwkv6-digits/`` are tiny Vision-RWKV classifiers (VRWKV
and VRWKV6) trained by ``examples/train_tiny_vrwkv.py`` on scikit-learn's handwritten
digits; they carry their held-out images (``heldout.safetensors``). Load one with
:func:`tiny_vision_model_path`::

    from transformers import pipeline
    classify = pipeline("image-classification", model=tiny_vision_model_path())

``tiny-restore-rwkv-denoise/`` is a tiny Restore-RWKV grey-level denoiser (Gaussian noise of
sigma 25/255) trained by ``examples/train_tiny_restore_rwkv.py`` on one of scikit-learn's
sample photographs and measured on the other (its held-out crop ships with it,
``heldout.safetensors``; :mod:`rwkv_hf.pretrained.denoise` computes the PSNR and the blur
baseline). Load it with :func:`tiny_restore_model_path`::

    from transformers import AutoModelForImageToImage
    model = AutoModelForImageToImage.from_pretrained(tiny_restore_model_path())

``tiny-rwkv-clip-digits/`` is a tiny RWKV-CLIP trained by ``examples/train_tiny_rwkv_clip.py``
on the same digits, paired with captions naming them; it classifies the held-out digits
zero-shot (:mod:`rwkv_hf.pretrained.zero_shot`). Load it with :func:`tiny_clip_model_path`::

    classify = pipeline("zero-shot-image-classification", model=tiny_clip_model_path())
    classify(image, candidate_labels=DIGIT_WORDS, hypothesis_template="a photo of the number {}.")

``tiny-pointrwkv-shapes/`` and ``tiny-pointrwkv-parts/`` are tiny PointRWKVs, a classifier and a
part segmentation model, trained by ``examples/train_tiny_pointrwkv.py`` on the synthetic
objects of :mod:`rwkv_hf.pretrained.shapes` (their held-out objects ship with them). Load one
with :func:`tiny_point_model_path`::

    from rwkv_hf import PointRwkvForPointCloudSegmentation
    model = PointRwkvForPointCloudSegmentation.from_pretrained(tiny_point_model_path("segment"))
"""
import os

from .zero_shot import DIGIT_WORDS, zero_shot_accuracy  # noqa: F401

TINY_MODEL_NAME = "tiny-rwkv7-pydoc"
TINY_VISION_NAMES = {4: "tiny-vrwkv-digits", 6: "tiny-vrwkv6-digits"}
TINY_RESTORE_NAME = "tiny-restore-rwkv-denoise"
TINY_CLIP_NAME = "tiny-rwkv-clip-digits"
TINY_POINT_NAMES = {"classify": "tiny-pointrwkv-shapes", "segment": "tiny-pointrwkv-parts"}


def tiny_model_path():
    """Folder of the shipped tiny RWKV-7 (config, weights, tokenizer, eval.json)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), TINY_MODEL_NAME)


def tiny_vision_model_path(version=4):
    """Folder of the shipped tiny Vision-RWKV digit classifier, VRWKV (4) or VRWKV6 (6):
    config, weights, image processor, eval.json, heldout.safetensors."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), TINY_VISION_NAMES[version])


def tiny_restore_model_path():
    """Folder of the shipped tiny Restore-RWKV denoiser: config, weights, eval.json,
    heldout.safetensors (the clean crop as uint8 and its noisy version)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), TINY_RESTORE_NAME)


def tiny_clip_model_path():
    """Folder of the shipped tiny RWKV-CLIP: config, weights, processor, eval.json,
    heldout.safetensors (the held-out digit images and labels)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), TINY_CLIP_NAME)


def tiny_point_model_path(task="classify"):
    """Folder of a shipped tiny PointRWKV trained on :mod:`rwkv_hf.pretrained.shapes`: the
    classifier (``"classify"``) or the part segmentation model (``"segment"``); config,
    weights, eval.json, heldout.safetensors."""
    if task not in TINY_POINT_NAMES:
        raise ValueError(f"task must be one of {list(TINY_POINT_NAMES)}, got {task!r}")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), TINY_POINT_NAMES[task])
