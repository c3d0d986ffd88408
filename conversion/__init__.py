"""Converters from original RWKV checkpoint layouts to rwkv_hf's (and back).

Importable as ``rwkv_hf.conversion`` (this folder ships inside the package)."""
