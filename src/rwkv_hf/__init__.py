"""rwkv_hf: the RWKV family as Hugging Face transformers models.

So far this release contains the WKV operator layer (``rwkv_hf.ops``); the model
families, converters and Hub tools are being built on top of it (see README).
"""
from . import ops

__version__ = "0.1.0.dev0"

__all__ = ["ops", "__version__"]
