"""Official Vision-RWKV checkpoints (OpenGVLab/Vision-RWKV) -> rwkv_hf.

Sources: the mmcls classification checkpoints (``{'meta', 'state_dict', ...}`` with
``backbone.*`` and ``head.fc.*``), InternImage's VRWKV-L (``{'model' or 'state_dict', 'config'
(yacs), 'optimizer', ...}`` with ``head.0.*`` / ``head.2.*``), bare backbone state dicts
(``patch_embed.*``, ``layers.*``), DDP ``module.`` / ``torch.compile`` ``_orig_mod.`` prefixes,
and rwkv_hf's own layout. Pickled metadata is read as inert placeholders (no code from the
file runs) and used for the settings the tensors do not carry: ``post_norm`` and the layer
scale's init value from mmcv's config text or the yacs config, the class names from mmcls'
``meta['CLASSES']``.

rwkv_hf's classifier uses the official key names, so the mapping is the identity on
``backbone.*`` / ``head.*``; tensors under any other prefix (a detector's neck, the
segmentation heads) are discarded and reported, and an unknown ``backbone.*`` tensor is an
error that names it.
"""
import os
import re

from .loading import (ConversionError, load_pickle_with_metadata, load_source, make_config, place_weights, require,
                      strip_wrapper_prefixes)

_LAYER = re.compile(r"^backbone\.layers\.(\d+)\.")


def is_vision_checkpoint(state_dict):
    """True for Vision-RWKV weights in the official (or rwkv_hf) key layout."""
    keys = [strip_wrapper_prefixes(k) for k in state_dict]
    return any(re.search(r"(^|\.)layers\.\d+\.att\.(spatial_decay|time_maa_x)$", k) for k in keys) \
        and any(k.endswith("patch_embed.projection.weight") for k in keys)


def normalize(state_dict):
    """(weights with ``backbone.`` / ``head.`` keys, {discarded key: shape})."""
    out, discarded = {}, {}
    keys = {strip_wrapper_prefixes(k): k for k in state_dict}
    bare = not any(k.startswith("backbone.") for k in keys)  # a backbone-only state dict
    for key, original in keys.items():
        name = "backbone." + key if bare and not key.startswith("head.") else key
        if name.startswith(("backbone.", "head.")):
            out[name] = state_dict[original]
        else:
            discarded[original] = tuple(state_dict[original].shape)
    return out, discarded


def load_official(path, trust_pickle=False):
    """(weights, extras, discarded) of an official checkpoint file or an rwkv_hf folder:
    ``weights`` in rwkv_hf's classifier layout, ``extras`` the checkpoint's other top-level
    entries as plain Python (``{}`` for safetensors and folders), ``discarded`` the tensors
    not under ``backbone.`` / ``head.``."""
    path = os.fspath(path)
    if os.path.isfile(path) and not path.endswith(".safetensors"):
        state_dict, extras = load_pickle_with_metadata(path, trust_pickle)
    else:
        state_dict, config_json = load_source(path, trust_pickle)
        extras = {"config.json": config_json} if config_json else {}
    weights, discarded = normalize(state_dict)
    return weights, extras, discarded


def _settings_from_extras(extras):
    """post_norm / layer-scale init / class names recorded in the checkpoint's metadata."""
    found = {}
    meta = extras.get("meta")
    text = meta.get("config") if isinstance(meta, dict) else None
    if isinstance(text, str):  # mmcv Config.pretty_text of the training config
        backbone = text[text.find("backbone"):] if "backbone" in text else text
        m = re.search(r"post_norm\s*=\s*(True|False)", backbone)
        if m:
            found["post_norm"] = m.group(1) == "True"
        m = re.search(r"init_values\s*=\s*([-+0-9.eE]+|None)", backbone)
        if m:
            found["layer_scale_init_value"] = None if m.group(1) == "None" else float(m.group(1))
    if isinstance(meta, dict) and isinstance(meta.get("CLASSES"), (list, tuple)):
        found["class_names"] = [str(c) for c in meta["CLASSES"]]
    cfg = extras.get("config")
    vrwkv = cfg.get("MODEL", {}).get("VRWKV") if isinstance(cfg, dict) else None
    if isinstance(vrwkv, dict):  # InternImage's yacs config
        if "POST_NORM" in vrwkv:
            found["post_norm"] = bool(vrwkv["POST_NORM"])
        if "INIT_VALUES" in vrwkv:
            found["layer_scale_init_value"] = vrwkv["INIT_VALUES"]
        data = cfg.get("DATA", {})
        if isinstance(data, dict) and isinstance(data.get("IMG_SIZE"), int):
            found["eval_size"] = data["IMG_SIZE"]
    hf = extras.get("config.json")
    if isinstance(hf, dict):
        for key in ("post_norm", "layer_scale_init_value", "image_size", "layer_norm_eps", "id2label"):
            if key in hf:
                found[key] = hf[key]
    return found


def _need(weights, key):
    return require(weights, key, "Vision-RWKV")


def config_from_state_dict(weights, extras=None, **overrides):
    """(config, notes): the rwkv_hf config of official Vision-RWKV weights. Sizes come from
    the shapes; ``post_norm`` and the layer-scale init from the metadata, else the published
    rule (every released model wider than 192 is post-norm), said in ``notes``."""
    from ..vision import Vrwkv6Config, VrwkvConfig

    notes = []
    settings = _settings_from_extras(extras or {})
    version = 6 if "backbone.layers.0.att.time_maa_x" in weights else 4
    pos = _need(weights, "backbone.pos_embed")
    proj = _need(weights, "backbone.patch_embed.projection.weight")
    hidden, patch, channels = pos.shape[-1], proj.shape[-1], proj.shape[1]
    layers = sorted({int(m.group(1)) for k in weights for m in [_LAYER.match(k)] if m})
    if not layers or layers != list(range(len(layers))):
        raise ConversionError(f"the checkpoint's blocks are not numbered 0..N-1: {layers[:10]}")
    kw = dict(hidden_size=hidden, num_hidden_layers=len(layers), patch_size=patch, num_channels=channels,
              intermediate_size=_need(weights, "backbone.layers.0.ffn.key.weight").shape[0],
              key_norm="backbone.layers.0.att.key_norm.weight" in weights,
              final_norm="backbone.ln1.weight" in weights)
    side = round(pos.shape[1] ** 0.5)
    kw["image_size"] = settings.get("image_size", side * patch)
    if side * side != pos.shape[1] and "image_size" not in settings:
        raise ConversionError(f"backbone.pos_embed has {pos.shape[1]} positions, not a square grid; pass "
                              "image_size=[height, width] as a config override")
    if "backbone.layers.0.gamma1" in weights:
        kw["layer_scale_init_value"] = settings.get("layer_scale_init_value") or 1e-5
    if "post_norm" in overrides or "post_norm" in settings:
        kw["post_norm"] = settings.get("post_norm")
    else:
        kw["post_norm"] = hidden > 192
        notes.append(f"post_norm is not recorded in the checkpoint; set to {kw['post_norm']} as in the published "
                     "models (post-norm for every width above 192); override it if this model differs")
    if "head.fc.weight" in weights:
        kw["num_labels"] = weights["head.fc.weight"].shape[0]
    elif "head.0.weight" in weights:
        kw["classifier_hidden_size"] = weights["head.0.weight"].shape[0]
        kw["num_labels"] = _need(weights, "head.2.weight").shape[0]
    names = settings.get("class_names")
    if names and len(names) == kw.get("num_labels"):
        kw["id2label"] = dict(enumerate(names))
    elif settings.get("id2label") and len(settings["id2label"]) == kw.get("num_labels"):
        kw["id2label"] = {int(k): v for k, v in settings["id2label"].items()}
    if version == 6:
        faaaa = _need(weights, "backbone.layers.0.att.time_faaaa")
        kw.update(head_size=faaaa.shape[1],
                  time_mix_extra_dim=_need(weights, "backbone.layers.0.att.time_maa_w1").shape[1] // 5,
                  time_decay_extra_dim=_need(weights, "backbone.layers.0.att.time_decay_w1").shape[1])
    config = make_config(Vrwkv6Config if version == 6 else VrwkvConfig, kw, overrides)
    return config, version, settings, notes


def build_model(weights, config, version):
    """The rwkv_hf model holding ``weights`` (a classifier when there is a head, else the base
    model); the tensors are placed as they are (no copies). Unknown or missing keys raise."""
    from ..vision import VRWKV_CLASSES

    classes = VRWKV_CLASSES[version]
    has_head = any(k.startswith("head.") for k in weights)
    if has_head:
        return place_weights(classes[2], config, dict(weights))
    return place_weights(classes[1], config, {k[len("backbone."):]: v for k, v in weights.items()},
                         shown=lambda k: "backbone." + k)
