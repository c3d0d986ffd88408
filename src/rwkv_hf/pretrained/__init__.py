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
"""
import os

TINY_MODEL_NAME = "tiny-rwkv7-pydoc"


def tiny_model_path():
    """Folder of the shipped tiny RWKV-7 (config, weights, tokenizer, eval.json)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), TINY_MODEL_NAME)
