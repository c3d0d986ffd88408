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

``tiny-vrwkv-digits/`` is a tiny Vision-RWKV classifier trained by
``examples/train_tiny_vrwkv.py`` on scikit-learn's handwritten digits; it carries its
held-out images (``heldout.safetensors``). Load it with :func:`tiny_vision_model_path`::

    from transformers import pipeline
    classify = pipeline("image-classification", model=tiny_vision_model_path())
"""
import os

TINY_MODEL_NAME = "tiny-rwkv7-pydoc"
TINY_VISION_NAME = "tiny-vrwkv-digits"


def tiny_model_path():
    """Folder of the shipped tiny RWKV-7 (config, weights, tokenizer, eval.json)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), TINY_MODEL_NAME)


def tiny_vision_model_path():
    """Folder of the shipped tiny Vision-RWKV digit classifier (config, weights, image
    processor, eval.json, heldout.safetensors)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), TINY_VISION_NAME)
