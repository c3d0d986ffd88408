"""Restore-RWKV checkpoints (Yaziwel/Restore-RWKV) -> rwkv_hf.

Sources: the official ``torch.save(model.state_dict())`` files (``patch_embed.*``,
``encoder_level1.N.*`` ... ``refinement.N.*``, ``output.*``), the same wrapped in a dict
(``state_dict`` / ``model`` entries, DDP ``module.`` and ``torch.compile`` ``_orig_mod.``
prefixes), a bare trunk (no ``output.*``), and rwkv_hf's own layout (re-saving).

rwkv_hf's models use the official names, under ``restore_rwkv.`` for the trunk. The one
official tensor not kept is each Omni-Shift's ``conv5x5_reparam.weight``: the official model
overwrites it with the fold of the four branches on its first forward in evaluation mode, and
rwkv_hf computes that fold on every forward, so it is derived (or, saved before any evaluation,
an unused random initialisation); it is reported as discarded. Any other tensor the model has
no place for is an error that names it.
"""
import re

from .loading import ConversionError, count_numbered, make_config, place_weights, require, strip_wrapper_prefixes

TRUNK = ("patch_embed", "encoder_level1", "down1_2", "encoder_level2", "down2_3", "encoder_level3", "down3_4",
         "latent", "up4_3", "reduce_chan_level3", "decoder_level3", "up3_2", "reduce_chan_level2",
         "decoder_level2", "up2_1", "decoder_level1", "refinement")
PREFIX = "restore_rwkv."
_DERIVED = re.compile(r"\.omni_shift\.conv5x5_reparam\.weight$")


def is_restore_checkpoint(state_dict):
    """True for Restore-RWKV weights in the official (or rwkv_hf) key layout."""
    keys = {strip_wrapper_prefixes(k) for k in state_dict}
    return any(re.fullmatch(r"(restore_rwkv\.)?encoder_level1\.\d+\.att\.spatial_decay", k) for k in keys) \
        and bool(keys & {"patch_embed.weight", PREFIX + "patch_embed.weight"})


def normalize(state_dict):
    """(weights in rwkv_hf's layout: ``restore_rwkv.*`` and ``output.*``, {discarded key: shape})."""
    weights, discarded = {}, {}
    for original in state_dict:
        key = strip_wrapper_prefixes(original)
        if _DERIVED.search(key):
            discarded[original] = tuple(state_dict[original].shape)
        elif key.split(".", 1)[0] in TRUNK:
            weights[PREFIX + key] = state_dict[original]
        else:  # output.*, rwkv_hf's restore_rwkv.*, or unknown (build_model names it)
            weights[key] = state_dict[original]
    return weights, discarded


def _need(weights, key):
    return require(weights, key, "Restore-RWKV")


def _count(weights, stage):
    return count_numbered(weights, f"{PREFIX}{stage}.")


def config_from_state_dict(weights, config_json=None, **overrides):
    """(config, notes): the rwkv_hf config of Restore-RWKV weights, sizes from the shapes.
    ``residual`` (the official models always add the input) comes from rwkv_hf's config.json
    when the source is an rwkv_hf folder."""
    from ..restore import RestoreRwkvConfig

    notes = []
    embed = _need(weights, PREFIX + "patch_embed.weight")
    hidden, channels = embed.shape[0], embed.shape[1]
    blocks = [_count(weights, s) for s in ("encoder_level1", "encoder_level2", "encoder_level3", "latent")]
    decoder = [_count(weights, s) for s in ("decoder_level1", "decoder_level2", "decoder_level3")]
    if decoder != blocks[:3]:
        raise ConversionError(f"decoder levels 1-3 have {decoder} blocks but encoder levels 1-3 {blocks[:3]}: "
                              "Restore-RWKV repeats the encoder's counts")
    kw = dict(num_channels=channels, hidden_size=hidden, num_blocks=blocks,
              num_refinement_blocks=_count(weights, "refinement"))
    probe = next((k for k in weights if re.match(rf"^{re.escape(PREFIX)}\w+\.\d+\.att\.spatial_decay$", k)), None)
    if probe is None:
        raise ConversionError("the checkpoint has no Restore-RWKV block (no *.att.spatial_decay)")
    kw["recurrence"] = weights[probe].shape[0]
    width = weights[probe].shape[1]
    ffn_key = weights.get(probe.replace("att.spatial_decay", "ffn.key.weight"))
    if ffn_key is not None:
        kw["hidden_rate"] = ffn_key.shape[0] // width
    if "output.weight" in weights:
        kw["out_channels"] = weights["output.weight"].shape[0]
    if isinstance(config_json, dict) and "residual" in config_json:
        kw["residual"] = bool(config_json["residual"])
    elif kw.get("out_channels", channels) != channels:
        kw["residual"] = False
        notes.append(f"{channels} input and {kw['out_channels']} output channels: the model is built without the "
                     "global residual (residual=False)")
    return make_config(RestoreRwkvConfig, kw, overrides), notes


def build_model(weights, config):
    """The rwkv_hf model holding ``weights`` (the restorer when there is an ``output``
    convolution, else the trunk); the tensors are placed as they are (no copies). Unknown or
    missing keys raise, named as in the official layout."""
    from ..restore import RestoreRwkvForImageRestoration, RestoreRwkvModel

    if "output.weight" in weights:
        return place_weights(RestoreRwkvForImageRestoration, config, dict(weights),
                             shown=lambda k: k[len(PREFIX):] if k.startswith(PREFIX) else k)
    return place_weights(RestoreRwkvModel, config,
                         {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in weights.items()})


def to_official(model):
    """The official state dict of an rwkv_hf Restore-RWKV model (``RestoreRwkvForImageRestoration``
    or the trunk): the official names in the official order, each Omni-Shift's
    ``conv5x5_reparam.weight`` the fold the official model would compute (``OmniShift.folded_kernel``,
    in the official order of operations: the same bits; it refolds on its first forward in
    evaluation mode anyway). Tensors are the model's own (no copies) except
    the folds."""
    from ..restore.modeling_restore_rwkv import OmniShift

    trunk = getattr(model, "restore_rwkv", model)
    folds = {name: m.folded_kernel().detach() for name, m in trunk.named_modules() if isinstance(m, OmniShift)}
    out = {}
    for key, tensor in trunk.state_dict().items():
        out[key] = tensor
        owner = key.rsplit(".", 2)[0]  # "<...>.omni_shift" for "<...>.omni_shift.conv5x5.weight"
        if owner in folds and key.endswith(".conv5x5.weight"):
            out[owner + ".conv5x5_reparam.weight"] = folds[owner]
    if trunk is not model:
        out.update({k: v for k, v in model.state_dict().items() if not k.startswith(PREFIX)})
    return out
