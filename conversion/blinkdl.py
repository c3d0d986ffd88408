"""BlinkDL's checkpoint layout (``RWKV-LM`` training code, the ``rwkv`` pip package) for the
language models v4, v5.2, v6 and v7, in both directions.

BlinkDL names every tensor ``emb.weight``, ``blocks.N.{ln0,ln1,ln2,att,ffn}.*``,
``ln_out.*``, ``head.weight`` and stores per-channel vectors as ``[1, 1, C]``; rwkv_hf
uses the same parameter names under ``model.`` (``att`` -> ``attn``) with ``[C]``
vectors. Everything else (configuration) is inferred from the shapes.
"""
import re

import torch

from ..lm import RWKV_LM_CLASSES, RWKV_LM_CONFIGS

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
# v7's block 0 has no value residual; BlinkDL's checkpoints carry unused v0/v1/v2 there.
_V7_UNUSED = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")


def detect_version(state_dict):
    """4, 5 (5.2), 6 or 7 from the key names (and, for v5, the decay's shape)."""
    keys = list(state_dict)
    if any(k.endswith("att.r_k") for k in keys):
        return 7
    if any(".att.time_maa" in k for k in keys):
        return 6
    if any(".att.ln_x." in k for k in keys):
        decay = state_dict.get("blocks.0.att.time_decay")
        if decay is None or decay.dim() != 2 or decay.shape[1] == 1 or "blocks.0.att.gate.weight" not in state_dict:
            raise ValueError("RWKV-5.0/5.1 checkpoints (scalar per-head decay or no gate) are not supported; "
                             "only 5.2 (time_decay [H, N] and a gate) is.")
        return 5
    if "blocks.0.att.time_first" in state_dict:
        return 4
    raise ValueError("Not a BlinkDL RWKV language-model checkpoint: no blocks.0.att.time_first, ln_x, "
                     f"time_maa or r_k key (first keys: {keys[:5]})")


def config_from_state_dict(state_dict, version=None, **overrides):
    """The rwkv_hf config whose shapes match a BlinkDL state dict."""
    version = version or detect_version(state_dict)
    sd = state_dict
    vocab, hidden = sd["emb.weight"].shape
    layers = 1 + max(int(m.group(1)) for k in sd if (m := _BLOCK.match(k)))
    kw = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
              intermediate_size=sd["blocks.0.ffn.key.weight"].shape[0])
    if version == 5:
        kw["head_size"] = sd["blocks.0.att.time_decay"].shape[1]
    elif version == 6:
        kw["head_size"] = sd["blocks.0.att.time_faaaa"].shape[-1]
        kw["time_mix_extra_dim"] = sd["blocks.0.att.time_maa_w1"].shape[1] // 5
        kw["time_decay_extra_dim"] = sd["blocks.0.att.time_decay_w1"].shape[1]
    elif version == 7:
        kw["head_size"] = sd["blocks.0.att.r_k"].shape[1]
        kw["decay_low_rank_dim"] = sd["blocks.0.att.w1"].shape[1]
        kw["a_low_rank_dim"] = sd["blocks.0.att.a1"].shape[1]
        kw["gate_low_rank_dim"] = sd["blocks.0.att.g1"].shape[1]
        v1 = sd.get("blocks.1.att.v1", sd.get("blocks.0.att.v1"))
        if v1 is not None:
            kw["value_low_rank_dim"] = v1.shape[1]
    kw.update(overrides)
    return RWKV_LM_CONFIGS[version](**kw)


def _to_ours(key):
    if key == "emb.weight":
        return "model.embeddings.weight"
    if key.startswith("ln_out."):
        return "model." + key
    if key == "head.weight":
        return key
    return "model." + key.replace(".att.", ".attn.", 1)


def _to_blinkdl(key):
    if key == "model.embeddings.weight":
        return "emb.weight"
    if key == "head.weight":
        return key
    return key[len("model."):].replace(".attn.", ".att.", 1)


def from_blinkdl(state_dict, **config_overrides):
    """(config, rwkv_hf state dict, discarded keys) from a BlinkDL state dict. Refuses
    (naming them) keys it cannot place; the only discarded keys are v7's unused block-0
    value-residual tensors."""
    version = detect_version(state_dict)
    config = config_from_state_dict(state_dict, version, **config_overrides)
    model_cls = RWKV_LM_CLASSES[version][2]
    with torch.device("meta"):
        expected = {k: v.shape for k, v in model_cls(config).state_dict().items()}
    out, discarded, unknown = {}, [], []
    for key, tensor in state_dict.items():
        if key in _V7_UNUSED and version == 7:
            discarded.append(key)
            continue
        ours = _to_ours(key)
        if ours not in expected:
            unknown.append(key)
            continue
        if tensor.numel() != expected[ours].numel():
            raise ValueError(f"{key}: shape {tuple(tensor.shape)} does not fit {ours} {tuple(expected[ours])}")
        out[ours] = tensor.reshape(expected[ours])
    missing = sorted(set(expected) - set(out))
    if unknown or missing:
        raise ValueError(f"Cannot map this checkpoint: unknown keys {unknown[:10]}, missing {missing[:10]}")
    return config, out, discarded


def to_blinkdl(model, copy=True):
    """BlinkDL state dict (``[1, 1, C]`` vectors, key order as BlinkDL's modules) of an
    rwkv_hf language model; v7 gets the zero block-0 value-residual tensors BlinkDL's
    loaders expect. ``copy=False`` returns views of the model's tensors instead of clones
    (no second copy of the weights: the converter saves them straight away)."""
    config, version = model.config, model.rwkv_version
    out = {}
    for key, tensor in model.state_dict().items():
        name = _to_blinkdl(key)
        flat_vector = tensor.dim() == 1 and (".att." in name or ".ffn." in name) and ".ln_x." not in name
        if flat_vector and not (version == 4 and name.endswith((".time_decay", ".time_first"))):
            tensor = tensor.reshape(1, 1, -1)
        out[name] = tensor.detach().clone() if copy else tensor.detach()
        if version == 7 and name == "blocks.0.att.a2":  # keep BlinkDL's key order
            c, dv = config.hidden_size, config.value_low_rank_dim
            out["blocks.0.att.v0"] = torch.zeros(1, 1, c, dtype=tensor.dtype)
            out["blocks.0.att.v1"] = torch.zeros(c, dv, dtype=tensor.dtype)
            out["blocks.0.att.v2"] = torch.zeros(dv, c, dtype=tensor.dtype)
    return out
