"""PEFT (LoRA) support for the RWKV language models, Vision-RWKV, Restore-RWKV, RWKV-CLIP and
PointRWKV.

Importing :mod:`rwkv_hf` calls :func:`register_peft`, which (when ``peft`` is installed)

* registers default LoRA targets for the model types ``rwkv_hf_v4`` ... ``rwkv_hf_v7``,
  ``rwkv_hf_vrwkv``, ``rwkv_hf_vrwkv6``, ``rwkv_hf_restore_rwkv``, ``rwkv_hf_rwkv_clip``,
  ``rwkv_hf_rwkv_clip_text`` and ``rwkv_hf_pointrwkv`` in
  PEFT's ``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`` (and in the tables PEFT
  copies from it: LoHa, LoKr, OFT, BOFT, ...), so
  ``get_peft_model(model, LoraConfig(task_type="CAUSAL_LM"))`` works without naming modules;
* makes ``PeftModel.from_pretrained`` / ``load_adapter`` refuse an adapter saved for another
  RWKV version, model type or size with a clear error (see :func:`check_adapter`).

Default targets (:data:`DEFAULT_LORA_TARGETS`), matched as module-name suffixes: every
``nn.Linear`` of the blocks, i.e. the time-mix ``receptance``, ``key``, ``value``, ``output``
(and ``gate`` for v5/v6) and the channel-mix ``key``, ``value`` (and ``receptance`` for
v4-v6). The embedding, the head, the LayerNorms and the low-rank "LoRA" parameters inside
v6/v7 time-mix (``time_maa_w1``, ``w1``, ``a1`` ...) are not targeted; name them in
``modules_to_save``/``target_parameters`` yourself if you want them trained.

Vision-RWKV: the same linears of the spatial mix (``att``: ``key``, ``value``,
``receptance``, ``output``, and ``gate`` for VRWKV6) and of the channel mix (``ffn``). The
classification head is not a LoRA target: for a new label set pass
``LoraConfig(modules_to_save=["head"])`` so the fresh head is trained and saved with the
adapter.

Restore-RWKV: the linears of every block's spatial and channel mix (``att.key`` ...
``ffn.value``); named with their mixer, so that the last convolution (``output``) is not a
target. The Omni-Shift kernels, convolutions of the U-Net and the layer scales are not
targeted.

RWKV-CLIP: the linears of both towers' blocks (image ``layers.N`` and text ``blocks.N``:
``att.key`` ... ``att.gate``, ``ffn.key`` / ``receptance`` / ``value``); the embeddings,
norms and ``logit_scale`` are not targeted.

PointRWKV: the linears of every block's spatial mix (``proj_r``, ``proj_k``, ``proj_v``,
``proj_g``, ``w_proj``, ``out_proj``), channel mix (``key_proj``, ``receptance_proj``,
``value_proj``) and the branch ``fusion``; not the patch encoders, the graph branch's MLPs or
the classification head (``modules_to_save=["head"]`` for a new label set). The patch
encoders' BatchNorm statistics are buffers that training mode updates and an adapter does not
save: keep those BatchNorms in ``eval()`` while training the adapter.

Per-channel vectors. The token-shift mixing vectors (``time_mix_*`` v4/v5, ``time_maa_*``
v6, ``x_*`` v7) are 1-D parameters, which PEFT cannot wrap (``modules_to_save`` takes
modules, ``target_parameters`` only 2-D/3-D weights). To train them alongside LoRA::

    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM"))
    names = mark_time_mix_trainable(peft_model)      # requires_grad on those vectors
    ...train...
    peft_model.save_pretrained(out)                  # the LoRA adapter (not the vectors)
    save_time_mix(peft_model, out)                   # + out/rwkv_time_mix.safetensors

    model = PeftModel.from_pretrained(base, out)
    load_time_mix(model, out)                        # put the tuned vectors back

``merge_and_unload()`` keeps the tuned vectors (they live in the base model), so a merged
model saved with ``save_pretrained`` carries them without :func:`save_time_mix`.
"""
import json
import os
import re

import torch

RWKV_LM_MODEL_TYPES = ("rwkv_hf_v4", "rwkv_hf_v5", "rwkv_hf_v6", "rwkv_hf_v7")

DEFAULT_LORA_TARGETS = {
    "rwkv_hf_v4": ["receptance", "key", "value", "output"],
    "rwkv_hf_v5": ["receptance", "key", "value", "output", "gate"],
    "rwkv_hf_v6": ["receptance", "key", "value", "output", "gate"],
    "rwkv_hf_v7": ["receptance", "key", "value", "output"],
    "rwkv_hf_vrwkv": ["receptance", "key", "value", "output"],
    "rwkv_hf_vrwkv6": ["receptance", "key", "value", "output", "gate"],
    "rwkv_hf_rwkv_clip": ["receptance", "key", "value", "output", "gate"],
    "rwkv_hf_rwkv_clip_text": ["receptance", "key", "value", "output", "gate"],
    "rwkv_hf_restore_rwkv": ["att.receptance", "att.key", "att.value", "att.output", "ffn.key", "ffn.value",
                             "ffn.receptance"],
    "rwkv_hf_pointrwkv": ["proj_r", "proj_k", "proj_v", "proj_g", "w_proj", "out_proj", "key_proj",
                          "receptance_proj", "value_proj", "fusion"],
}

# Token-shift mixing vectors (one value per channel), by version.
TIME_MIX_PATTERN = re.compile(r"\.(attn|ffn)\.(time_mix_[kvrg]|time_maa_[xwkvrg]|x_[rwkvag])$")
# Optionally also the per-channel decay / bonus / gate vectors.
DECAY_PATTERN = re.compile(r"\.attn\.(time_decay|time_first|time_faaaa|w0|a0|v0|k_k|k_a|r_k)$")

TIME_MIX_FILE = "rwkv_time_mix.safetensors"

_PATCHED = False


def register_peft():
    """Register the default LoRA targets and the adapter check with PEFT (idempotent; a
    no-op when peft is not installed)."""
    global _PATCHED
    try:
        import peft
        from peft.utils import constants
    except ImportError:
        return False
    lora = constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    reference = lora.get("rwkv")
    for name in dir(constants):
        table = getattr(constants, name)
        if not (name.startswith("TRANSFORMERS_MODELS_TO_") and name.endswith("_TARGET_MODULES_MAPPING")
                and isinstance(table, dict)):
            continue
        # LoRA's table and the tables PEFT copies from it (same entry for HF's "rwkv")
        if table is lora or (reference is not None and table.get("rwkv") == reference):
            for model_type, targets in DEFAULT_LORA_TARGETS.items():
                table[model_type] = list(targets)
    if not _PATCHED:
        original = peft.PeftModel.load_adapter

        def load_adapter(self, model_id, adapter_name, *args, **kwargs):
            check_adapter(self.get_base_model(), model_id, subfolder=kwargs.get("subfolder"))
            return original(self, model_id, adapter_name, *args, **kwargs)

        load_adapter.__doc__ = original.__doc__
        load_adapter.__wrapped__ = original
        peft.PeftModel.load_adapter = load_adapter
        _PATCHED = True
    return True


def _rwkv_version(model):
    return getattr(model, "rwkv_version", None)


def check_adapter(model, adapter_dir, subfolder=None):
    """Raise ``ValueError`` when the adapter in the local folder ``adapter_dir`` was saved for
    another RWKV version (its ``auto_mapping`` class or base model ``config.json``) or size
    (the base ``config.json``, then the LoRA weight shapes). Non-RWKV models and adapters that
    are not local folders are left to PEFT."""
    version = _rwkv_version(model)
    from .clip import RwkvClipConfig, RwkvClipTextConfig
    from .restore import RestoreRwkvConfig
    from .vision import VRWKV_MODEL_TYPES

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    vision = model_type in VRWKV_MODEL_TYPES or model_type in (
        RestoreRwkvConfig.model_type, RwkvClipConfig.model_type, RwkvClipTextConfig.model_type)
    if (version is None and not vision) or not isinstance(adapter_dir, (str, os.PathLike)):
        return
    folder = os.path.join(adapter_dir, subfolder) if subfolder else adapter_dir
    config_path = os.path.join(folder, "adapter_config.json")
    if not os.path.isfile(config_path):
        return
    with open(config_path) as f:
        adapter_config = json.load(f)
    where = f"The adapter in {adapter_dir}"
    auto = adapter_config.get("auto_mapping") or {}
    m = re.match(r"RwkvV(\d)", str(auto.get("base_model_class", "")))
    if m and version is not None and int(m.group(1)) != version:
        raise ValueError(f"{where} was trained on {auto['base_model_class']} (RWKV-{m.group(1)}); this model "
                         f"is RWKV-{version} ({type(model).__name__}). Load it into an RWKV-{m.group(1)} model.")
    family = re.match(r"(Vrwkv6?)(Model|ForImageClassification|Backbone)$", str(auto.get("base_model_class", "")))
    ours = re.match(r"(Vrwkv6?)", type(model).__name__)
    if vision and family and ours and family.group(1) != ours.group(1):
        raise ValueError(f"{where} was trained on {auto['base_model_class']}; this model is {type(model).__name__} "
                         "(another Vision-RWKV version). Load it into a matching model.")
    base = adapter_config.get("base_model_name_or_path")
    base_config = os.path.join(base, "config.json") if base else None
    if base_config and os.path.isfile(base_config):
        with open(base_config) as f:
            saved = json.load(f)
        if saved.get("model_type") != model.config.model_type:
            raise ValueError(f"{where} was trained on a {saved.get('model_type')} model ({base}); this model is "
                             f"{model.config.model_type}.")
        for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "head_size", "vocab_size",
                    "patch_size"):
            if key in saved and getattr(model.config, key, None) is not None and saved[key] != getattr(
                    model.config, key):
                raise ValueError(f"{where} was trained on a model with {key}={saved[key]} ({base}); this model has "
                                 f"{key}={getattr(model.config, key)}: another model size.")
    weights = os.path.join(folder, "adapter_model.safetensors")
    if os.path.isfile(weights):
        from safetensors import safe_open

        modules = dict(model.named_modules())
        with safe_open(weights, "pt") as f:
            for key in f.keys():
                mm = re.match(r"base_model\.model\.(.+)\.lora_([AB])\.weight$", key)
                if not mm or mm.group(1) not in modules:
                    continue
                layer = modules[mm.group(1)]
                layer = getattr(layer, "base_layer", layer)
                if not isinstance(layer, torch.nn.Linear):
                    continue
                shape = f.get_slice(key).get_shape()
                dim, expected = (shape[1], layer.in_features) if mm.group(2) == "A" else (shape[0], layer.out_features)
                if dim != expected:
                    raise ValueError(f"{where} does not fit this model: {key} has shape {tuple(shape)}, but "
                                     f"{mm.group(1)} is Linear({layer.in_features}, {layer.out_features}) "
                                     "(an adapter for another model size).")


def time_mix_parameters(model, include_decay=False):
    """``{name: parameter}`` of the per-channel token-shift mixing vectors (and, with
    ``include_decay``, the decay/bonus vectors) of an RWKV model or a PeftModel around one;
    names are those of the bare transformers model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if _rwkv_version(base) is None:
        raise ValueError(f"Expected an rwkv_hf language model (or a PeftModel around one), got {type(base).__name__}.")
    found = {}
    for name, p in base.named_parameters():
        if TIME_MIX_PATTERN.search(name) or (include_decay and DECAY_PATTERN.search(name)):
            found[name] = p
    return found


def mark_time_mix_trainable(model, include_decay=False):
    """Set ``requires_grad`` on the per-channel mixing vectors (see :func:`time_mix_parameters`)
    so an optimizer over ``model.parameters()`` trains them with the adapter; returns their
    names. Save them with :func:`save_time_mix` (a PEFT adapter does not include them) or
    merge and save the full model."""
    params = time_mix_parameters(model, include_decay)
    for p in params.values():
        p.requires_grad_(True)
    return sorted(params)


def save_time_mix(model, save_directory, include_decay=False):
    """Write the per-channel vectors to ``save_directory/rwkv_time_mix.safetensors``."""
    from safetensors.torch import save_file

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = time_mix_parameters(model, include_decay)
    os.makedirs(save_directory, exist_ok=True)
    path = os.path.join(save_directory, TIME_MIX_FILE)
    save_file({k: v.detach().contiguous().cpu() for k, v in params.items()}, path,
              metadata={"format": "pt", "model_type": base.config.model_type,
                        "hidden_size": str(base.config.hidden_size),
                        "num_hidden_layers": str(base.config.num_hidden_layers)})
    return path


def load_time_mix(model, save_directory):
    """Copy the vectors saved by :func:`save_time_mix` into ``model`` (checked: model type,
    names and shapes)."""
    from safetensors import safe_open

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    path = save_directory if save_directory.endswith(".safetensors") else os.path.join(save_directory, TIME_MIX_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No {TIME_MIX_FILE} in {save_directory} (written by save_time_mix).")
    params = dict(base.named_parameters())
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
        if meta.get("model_type") != base.config.model_type:
            raise ValueError(f"{path} holds vectors of a {meta.get('model_type')} model; this model is "
                             f"{base.config.model_type}.")
        for key in f.keys():
            tensor = f.get_tensor(key)
            if key not in params or params[key].shape != tensor.shape:
                raise ValueError(f"{path}: {key} {tuple(tensor.shape)} does not fit this model (another size?).")
            with torch.no_grad():
                params[key].copy_(tensor)
