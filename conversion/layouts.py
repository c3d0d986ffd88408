"""The other public checkpoint layouts, renamed into BlinkDL's (whose converter,
``blinkdl.from_blinkdl``, then infers the configuration and checks every shape):

- transformers' own ``rwkv`` (RWKV-4, ``RwkvForCausalLM``) and the Hub remote-code
  ``Rwkv5ForCausalLM`` / ``Rwkv6ForCausalLM`` (same scheme): ``rwkv.embeddings``,
  ``rwkv.blocks.N.{pre_ln,ln1,ln2}``, ``.attention.`` / ``.feed_forward.``,
  ``time_mix_{key,value,receptance,gate}``, ``rwkv.ln_out``, ``head.weight``; the values are
  BlinkDL's unchanged (transformers' converter only renames).
- flash-linear-attention's RWKV-7 (``RWKV7ForCausalLM``, the fla-hub checkpoints):
  ``model.layers.N.attn.{r,k,v,o}_proj``, LoRAs as ``nn.Sequential(Linear, act, Linear)``
  (``lora.0.weight`` = X1ᵀ, ``lora.2.weight`` = X2ᵀ, ``lora.2.bias`` = X0), ``g_norm`` = ln_x,
  ``pre_norm``/``attn_norm``/``ffn_norm`` = ln0/ln1/ln2, ``model.norm``, ``lm_head``.

Each function returns ``(blinkdl_state_dict, original_name_of, notes)``.
"""
import re

import torch

from .loading import ConversionError

# ------------------------------------------------------------------ transformers / Hub v4-v6

_HF_MIX = {"time_mix_key": "time_mix_k", "time_mix_value": "time_mix_v",
           "time_mix_receptance": "time_mix_r", "time_mix_gate": "time_mix_g"}


def hf_version(state_dict):
    """4, 5 or 6 for a transformers / Hub remote-code RWKV state dict."""
    keys = list(state_dict)
    if any(".attention.time_maa_" in k for k in keys):
        return 6
    if any(".attention.time_faaaa" in k or ".attention.ln_x." in k for k in keys):
        return 5
    if any(".attention.time_first" in k for k in keys):
        return 4
    raise ConversionError(f"an rwkv.* checkpoint without time_first, time_faaaa or time_maa keys "
                          f"(first keys: {keys[:6]})")


def blinkdl_name_of_hf_key(key):
    """BlinkDL's name for a transformers / Hub remote-code RWKV key (None if outside the scheme)."""
    name = key
    for prefix in ("rwkv.", "rwkv5.", "rwkv6."):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    if name == "embeddings.weight":
        return "emb.weight"
    if name.startswith("ln_out.") or name == "head.weight":
        return name
    m = re.match(r"^blocks\.(\d+)\.(.*)$", name)
    if not m:
        return None
    layer, rest = m.groups()
    rest = rest.replace("pre_ln.", "ln0.", 1) if rest.startswith("pre_ln.") else rest
    if rest.startswith("attention."):
        rest = "att." + rest[len("attention."):]
    elif rest.startswith("feed_forward."):
        rest = "ffn." + rest[len("feed_forward."):]
    part, _, param = rest.partition(".")
    param = _HF_MIX.get(param, param)
    return f"blocks.{layer}.{part}.{param}"


def from_hf(state_dict):
    """transformers RWKV-4 / Hub RWKV-5, RWKV-6 names -> BlinkDL names (values untouched)."""
    out, original, unknown = {}, {}, []
    for key, tensor in state_dict.items():
        name = blinkdl_name_of_hf_key(key)
        if name is None:
            unknown.append(key)
            continue
        out[name], original[name] = tensor, key
    if unknown:
        raise ConversionError(f"keys outside the transformers/Hub RWKV scheme: {unknown[:10]}")
    return out, original, []


# ------------------------------------------------------------------ flash-linear-attention RWKV-7

_FLA_ATT = {"r_proj.weight": "receptance.weight", "k_proj.weight": "key.weight",
            "v_proj.weight": "value.weight", "o_proj.weight": "output.weight",
            "g_norm.weight": "ln_x.weight", "g_norm.bias": "ln_x.bias"}
_FLA_NORM = {"pre_norm": "ln0", "attn_norm": "ln1", "ffn_norm": "ln2"}
_FLA_OLD_MIX = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")  # fla's RWKV7Attention v1 stacked them as x_x [6, C]


def from_fla(state_dict):
    """flash-linear-attention RWKV-7 -> BlinkDL names; LoRA matrices transposed back (fla
    stores them as nn.Linear weights), LoRA biases become the X0 vectors."""
    out, original, unknown, notes = {}, {}, [], []

    def put(name, tensor, key):
        out[name], original[name] = tensor, key

    for key, tensor in state_dict.items():
        if key == "model.embeddings.weight":
            put("emb.weight", tensor, key)
        elif key.startswith("model.norm."):
            put("ln_out." + key[len("model.norm."):], tensor, key)
        elif key == "lm_head.weight":
            put("head.weight", tensor, key)
        elif m := re.match(r"^model\.layers\.(\d+)\.(pre_norm|attn_norm|ffn_norm)\.(weight|bias)$", key):
            put(f"blocks.{m[1]}.{_FLA_NORM[m[2]]}.{m[3]}", tensor, key)
        elif m := re.match(r"^model\.layers\.(\d+)\.attn\.(.+)$", key):
            layer, param = m.groups()
            att = f"blocks.{layer}.att."
            if lora := re.match(r"^([wavg])_lora\.lora\.(0\.weight|2\.weight|2\.bias)$", param):
                letter, which = lora.groups()
                if which == "2.bias":
                    put(att + letter + "0", tensor, key)
                else:  # nn.Linear keeps [out, in]; BlinkDL's X1 is [C, D], X2 is [D, C]
                    put(att + letter + ("1" if which == "0.weight" else "2"), tensor.t().contiguous(), key)
            elif param in _FLA_ATT:
                put(att + _FLA_ATT[param], tensor, key)
            elif param in _FLA_OLD_MIX + ("k_k", "k_a", "r_k"):
                put(att + param, tensor, key)
            elif param == "x_x" and tensor.shape[0] == 6:
                for i, name in enumerate(_FLA_OLD_MIX):
                    put(att + name, tensor[i].clone(), key)
            else:
                unknown.append(key)
        elif m := re.match(r"^model\.layers\.(\d+)\.ffn\.(x_k|key\.weight|value\.weight)$", key):
            put(f"blocks.{m[1]}.ffn.{m[2]}", tensor, key)
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f"keys outside flash-linear-attention's RWKV-7 scheme: {unknown[:10]}")
    # fla's norm_bias=False checkpoints have no LayerNorm/GroupNorm biases: zero biases are exact.
    for name in list(out):
        if name.endswith(".weight") and re.search(r"(\.ln[012x]|^ln_out)\.weight$", name):
            bias = name[: -len("weight")] + "bias"
            if bias not in out:
                out[bias], original[bias] = torch.zeros_like(out[name]), "(zero bias added)"
                notes.append(f"added a zero {bias} (the checkpoint has no norm biases)")
    return out, original, notes
