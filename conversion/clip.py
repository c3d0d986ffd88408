"""RWKV-CLIP checkpoints (deepglint/RWKV-CLIP) -> rwkv_hf.

Sources: the released ``model_31.pt`` files (``torch.save`` of the DDP model's state dict:
``module.`` and possibly ``_orig_mod.`` prefixes, which the official ``load_model_weight``
strips too), the same without prefixes, and rwkv_hf's own folders (re-saving).

rwkv_hf's :class:`~rwkv_hf.clip.RwkvClipModel` has the official key layout (``image_model.*``,
``text_model.*``, ``logit_scale``), so nothing is renamed. The official training keeps the text
tower's ``time_decay`` and ``time_faaaa`` in bf16 next to float32 weights; they are widened to
float32 (exactly), as rwkv_hf keeps decays in float32. Sizes come from the shapes; what the
shapes cannot tell (the text GroupNorm epsilon, 1e-5 * 8**2 in the official configs, and the
77-token context) takes the published values, or the folder's config.json when re-saving.
"""
import math

import torch

from .loading import ConversionError, count_numbered, make_config, place_weights, require, strip_wrapper_prefixes

_IMAGE, _TEXT = "image_model.", "text_model."


def is_clip_checkpoint(state_dict):
    """True for RWKV-CLIP weights (official or rwkv_hf layout)."""
    keys = {strip_wrapper_prefixes(k) for k in state_dict}
    return "text_model.emb.weight" in keys and "image_model.patch_embed.projection.weight" in keys


def normalize(state_dict):
    """(weights without wrapper prefixes, every floating tensor float32; the keys that were
    widened from a narrower float type)."""
    weights, widened = {}, []
    for original, tensor in state_dict.items():
        key = strip_wrapper_prefixes(original)
        if key in weights:
            raise ConversionError(f"{original!r} and another key both name {key!r} once the DDP / torch.compile "
                                  "prefixes are removed")
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            widened.append(key)
            tensor = tensor.float()
        weights[key] = tensor
    return weights, widened


def _need(weights, key):
    return require(weights, key, "RWKV-CLIP")


def _rwkv6_sizes(weights, block):
    """head_size and the low-rank widths of an RWKV-6 mixer at ``block`` (a key prefix)."""
    faaaa = _need(weights, block + "att.time_faaaa")
    width = faaaa.numel()
    return dict(head_size=width // faaaa.shape[0],
                time_mix_extra_dim=_need(weights, block + "att.time_maa_w2").shape[1],
                time_decay_extra_dim=_need(weights, block + "att.time_decay_w1").shape[1],
                intermediate_size=_need(weights, block + "ffn.key.weight").shape[0])


def config_from_state_dict(weights, config_json=None, **overrides):
    """(RwkvClipConfig, notes) of RWKV-CLIP weights: sizes from the shapes (an rwkv_hf
    folder's config.json, when given, supplies everything else)."""
    from ..clip import RwkvClipConfig

    notes = []
    proj = _need(weights, _IMAGE + "patch_embed.projection.weight")
    width, channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    tokens = _need(weights, _IMAGE + "pos_embed").shape[1]
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ConversionError(f"image_model.pos_embed has {tokens} positions, not a square grid")
    vision = dict(image_size=side * patch, patch_size=patch, num_channels=channels, hidden_size=width,
                  num_hidden_layers=count_numbered(weights, _IMAGE + "layers."),
                  **_rwkv6_sizes(weights, _IMAGE + "layers.0."))
    if _IMAGE + "layers.0.gamma1" in weights:  # not in the released models; kept if present
        vision["layer_scale_init_value"] = 1.0
    if _IMAGE + "layers.0.att.key_norm.weight" in weights:
        vision["key_norm"] = True
    if _IMAGE + "ln1.weight" not in weights:
        vision["final_norm"] = False
    emb = _need(weights, _TEXT + "emb.weight")
    text = dict(vocab_size=emb.shape[0], hidden_size=emb.shape[1],
                num_hidden_layers=count_numbered(weights, _TEXT + "blocks."), **_rwkv6_sizes(weights, _TEXT + "blocks.0."))
    kw = dict(vision_config=vision, text_config=text)
    if isinstance(config_json, dict) and config_json.get("model_type") == RwkvClipConfig.model_type:
        kw = {k: v for k, v in config_json.items() if k not in ("architectures", "auto_map", "transformers_version")}
    return make_config(RwkvClipConfig, kw, overrides), notes


def build_model(weights, config):
    """The :class:`~rwkv_hf.clip.RwkvClipModel` holding ``weights`` as they are (no copies);
    unknown or missing keys raise, named as in the official layout."""
    from ..clip import RwkvClipModel

    return place_weights(RwkvClipModel, config, dict(weights))
