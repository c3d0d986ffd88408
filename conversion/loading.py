"""Reading checkpoints safely: ``.pth``/``.bin`` pickles (``torch.load(weights_only=True)``),
``.safetensors`` files and Hugging Face folders (config.json + weights, sharded or not).

A pickle that needs anything beyond tensors, plain containers and the few globals in
``SAFE_GLOBALS`` is refused unless the caller opts in with ``trust_pickle=True``
(``--trust-pickle`` on the command line): unpickling arbitrary objects runs code.
"""
import json
import os
import pickle
import re
from collections.abc import Mapping

import torch


class ConversionError(ValueError):
    """A checkpoint that cannot be read or mapped; the message names the file and the key."""


# Globals torch's weights-only unpickler does not allow by default but that real RWKV
# checkpoints need. BlinkDL's .pth files and transformers' pytorch_model.bin files hold only
# tensors in (ordered) dicts, which torch already allows, so the list is empty; add to it
# only objects whose unpickling cannot run code.
SAFE_GLOBALS = []

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                   "pytorch_model.bin", "pytorch_model.bin.index.json")


def load_pickle(path, trust_pickle=False):
    """The state dict in a ``torch.save`` file, read without executing any pickled object
    unless ``trust_pickle``."""
    path = str(path)
    if trust_pickle:
        loader = dict(weights_only=False)
    else:
        loader = dict(weights_only=True)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            try:
                obj = torch.load(path, map_location="cpu", mmap=True, **loader)
            except RuntimeError as e:
                if "mmap" not in str(e):  # legacy (non-zip) files cannot be memory-mapped
                    raise
                obj = torch.load(path, map_location="cpu", **loader)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found is None:  # not a refused object: the bytes are not a pickle torch can read at all
            detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
            raise ConversionError(f"{path}: not a readable PyTorch checkpoint (truncated, corrupt or not a "
                                  f"checkpoint){': ' + detail.group(1) if detail else ''}") from None
        offender = found.group(1)
        raise ConversionError(
            f"{path}: refusing to unpickle {offender}: this checkpoint holds Python objects besides "
            "tensors, and loading them can execute arbitrary code. Nothing was executed. If you trust "
            "the file's source, pass --trust-pickle (convert(..., trust_pickle=True)).") from None
    except Exception as e:  # anything else the unpickler trips over: not a checkpoint we can read
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint (truncated, corrupt or not a "
                              f"checkpoint): {type(e).__name__}: {first}") from None
    return _state_dict_of(obj, path)


def _state_dict_of(obj, path):
    if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for wrapper in ("state_dict", "model", "module"):  # training checkpoints wrap the weights
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{path}: entries that are not tensors: {bad[:10]}")
    return dict(obj)


def load_safetensors(path):
    """The tensors of a safetensors file, memory-mapped (copy-on-write; read when used), each with
    its own storage (see ``safetensors_io.load_mapped``)."""
    from .safetensors_io import load_mapped

    try:
        return load_mapped(path)
    except (OSError, ValueError) as e:
        raise ConversionError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None


def load_file(path, trust_pickle=False):
    path = str(path)
    if path.endswith(".safetensors"):
        return load_safetensors(path)
    return load_pickle(path, trust_pickle)


def load_hf_folder(folder, trust_pickle=False):
    """(config dict, state dict) of a Hugging Face model folder."""
    folder = str(folder)
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise ConversionError(f"{folder}: not a model folder (no config.json; files: {sorted(os.listdir(folder))[:10]})")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ConversionError(f"{config_path}: not valid JSON: {e}") from None
    for name in HF_WEIGHT_FILES:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        if not name.endswith(".index.json"):
            return config, load_file(path, trust_pickle)
        try:
            with open(path, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError) as e:
            raise ConversionError(f"{path}: not a valid shard index: {e}") from None
        state_dict = {}
        for shard in shards:
            state_dict.update(load_file(os.path.join(folder, shard), trust_pickle))
        return config, state_dict
    raise ConversionError(f"{folder}: config.json but no weights (looked for {', '.join(HF_WEIGHT_FILES)})")


def load_source(src, trust_pickle=False):
    """(state dict, config dict or None) of a checkpoint file or a Hugging Face folder."""
    src = str(src)
    if os.path.isdir(src):
        return load_hf_folder(src, trust_pickle)[::-1]
    if not os.path.isfile(src):
        raise ConversionError(f"{src}: no such file or folder")
    return load_file(src, trust_pickle), None
