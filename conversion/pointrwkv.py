"""PointRWKV checkpoints (hithqd/PointRWKV) -> rwkv_hf.

Sources: the official classification and part segmentation checkpoints
(``utils/checkpoint.py``: ``{'model': state_dict, 'optimizer', 'epoch'}``; the loader unwraps
``model`` and lists the other entries as discarded), a bare ``PointRWKVCls`` (``backbone.*``,
``head.*``) or ``PointRWKVPartSeg`` (``backbone.*``, ``cls_embed.*``, ``propagation_layers.*``,
``seg_head.*``) state dict, with DDP
``module.`` / ``torch.compile`` ``_orig_mod.`` prefixes or not, and rwkv_hf's own folders
(the same keys: rwkv_hf uses the official names).

The checkpoint fixes the widths, depths, heads, graph rounds, classes (parts) and object
categories. The sampling sizes
(``num_groups``, ``group_sizes``, ``k_neighbors``) are in no tensor: they come from the rwkv_hf
config.json when converting an rwkv_hf folder, else from the released configuration (every
``cfgs/*.yaml``: 2048 / 1024 / 512 centres, patches of 32, 16 / 8 / 8 graph neighbours) when
the checkpoint has three scales, and ``--set`` overrides them (the report says which).
"""
from .loading import ConversionError, count_numbered, make_config, place_weights, require, strip_wrapper_prefixes

B = "backbone."
_SAMPLING = ("num_groups", "group_sizes", "k_neighbors")


def is_pointrwkv_checkpoint(state_dict):
    """True for PointRWKV weights in the official (= rwkv_hf) key layout."""
    return any(strip_wrapper_prefixes(k) == B + "blocks.0.0.spatial_mixing.decay_base" for k in state_dict)


def normalize(state_dict):
    """(weights with the wrapper prefixes removed, {} : nothing is derived or dropped)."""
    return {strip_wrapper_prefixes(k): v for k, v in state_dict.items()}, {}


def config_from_state_dict(weights, config_json=None, **overrides):
    """(config, notes): the rwkv_hf config of PointRWKV weights, sizes from the shapes."""
    from ..point import POINTRWKV_SIZES, PointRwkvConfig

    def need(key):
        return require(weights, key, "PointRWKV")

    notes = []
    hidden = need(B + "norms.0.weight").shape[0]
    scales = count_numbered(weights, B + "norms.")
    depths = [count_numbered(weights, f"{B}blocks.{i}.") for i in range(scales)]
    first = next((f"{B}blocks.{i}.0." for i, d in enumerate(depths) if d), None)
    if first is None:
        raise ConversionError("the checkpoint has no PRWKV block (no backbone.blocks.*.0.*)")
    kw = dict(hidden_size=hidden, depths=depths,
              num_heads=need(first + "spatial_mixing.u").shape[0],
              graph_iterations=count_numbered(weights, first + "lgm.graph_stabilizer.edge_mlps."),
              mlp_ratio=need(first + "channel_mixing.key_proj.weight").shape[0] / hidden)
    if "head.8.weight" in weights:
        kw["num_labels"] = weights["head.8.weight"].shape[0]
    if "seg_head.7.weight" in weights:
        kw["num_labels"] = weights["seg_head.7.weight"].shape[0]
        kw["num_shape_classes"] = need("cls_embed.0.weight").shape[1]
    released = POINTRWKV_SIZES["base"]
    if isinstance(config_json, dict) and all(n in config_json for n in _SAMPLING):
        kw.update({n: config_json[n] for n in _SAMPLING})
        for n in ("drop_path_rate", "classifier_dropout", "label_smoothing", "layer_norm_eps", "id2label",
                  "label2id", "num_shape_classes"):
            if n in config_json:
                kw[n] = config_json[n]
    elif all(n in overrides for n in _SAMPLING) or scales == len(released["num_groups"]):
        given = [n for n in _SAMPLING if n in overrides]
        kw.update({n: released[n] for n in _SAMPLING if n not in overrides})
        if len(given) < len(_SAMPLING):
            notes.append("sampling sizes recorded in no tensor: " + ", ".join(
                f"{n}={released[n]}" for n in _SAMPLING if n not in given)
                + " (the released configuration); change with --set")
    else:
        missing = [n for n in _SAMPLING if n not in overrides]
        raise ConversionError(f"a {scales}-scale PointRWKV: the sampling sizes are in no tensor and the released "
                              f"configuration has 3 scales; give them with --set ({', '.join(missing)}), e.g. "
                              f"--set num_groups=[1024,512] --set group_sizes=[32,32] --set k_neighbors=[16,8]")
    return make_config(PointRwkvConfig, kw, overrides), notes


def build_model(weights, config):
    """The rwkv_hf model holding ``weights`` (the classifier when there is a ``head``, the part
    segmentation model when there is a ``seg_head``, else the backbone); the tensors are placed
    as they are (no copies). Unknown or missing keys raise."""
    from ..point import PointRwkvForPointCloudClassification, PointRwkvForPointCloudSegmentation, PointRwkvModel

    if any(k.startswith("head.") for k in weights):
        return place_weights(PointRwkvForPointCloudClassification, config, dict(weights))
    if any(k.startswith("seg_head.") for k in weights):
        return place_weights(PointRwkvForPointCloudSegmentation, config, dict(weights))
    if any(not k.startswith(B) for k in weights):
        raise ConversionError("tensors outside backbone.* without a classification or segmentation head: "
                              f"{sorted(k for k in weights if not k.startswith(B))[:10]}")
    return place_weights(PointRwkvModel, config, {k[len(B):]: v for k, v in weights.items()},
                         shown=lambda k: B + k)
