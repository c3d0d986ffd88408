"""``convert(src, dst)``: any supported RWKV checkpoint -> an rwkv_hf folder, or an rwkv_hf
folder -> BlinkDL ``.pth`` (language models) or the official state dict (Restore-RWKV,
RWKV-CLIP, PointRWKV) when ``dst`` ends in ``.pth``. ``rwkv-hf convert SRC DST`` runs it.

Sources (layout and version detected from the key names, sizes from the shapes):

- BlinkDL ``.pth`` (v4, v5.2, v6, v7), e.g. ``RWKV-x070-World-1.5B-....pth``;
- transformers' ``RwkvForCausalLM`` (v4) folders or weight files;
- the Hub remote-code ``Rwkv5ForCausalLM`` / ``Rwkv6ForCausalLM`` folders;
- flash-linear-attention's ``RWKV7ForCausalLM`` (fla-hub) folders or weight files;
- the official Vision-RWKV, Restore-RWKV, RWKV-CLIP and PointRWKV checkpoints (``vision.py``,
  ``restore.py``, ``clip.py``, ``pointrwkv.py``);
- rwkv_hf's own layout (re-saving).

The output folder holds config.json, model.safetensors, generation_config.json, the tokenizer
files for the World (65536) and GPT-NeoX (50277) vocabularies, and a model card README.md.
Tensors the math does not use (v7's block-0 ``v0/v1/v2`` in BlinkDL checkpoints) are not part
of the model; they are kept in ``blinkdl_unused.safetensors`` and restored, bit for bit, by the
conversion back to ``.pth`` (zeros when the folder has no such file). Nothing is written unless
the whole conversion succeeds.
"""
import os
import shutil

import torch

from ..lm import RWKV_LM_CLASSES, RWKV_LM_CONFIGS
from ..model_card import CODENAMES, model_card  # noqa: F401  (CODENAMES: re-exported)
from ..model_card import human_size as _human
from ..clip import RwkvClipConfig
from ..point import PointRwkvConfig
from ..restore import RestoreRwkvConfig
from ..vision import VRWKV_MODEL_TYPES
from ..vision.image_processing_vrwkv import default_image_processor
from . import blinkdl, clip, pointrwkv, restore, vision
from .layouts import from_fla, from_hf, hf_version
from .loading import ConversionError, load_pickle_with_metadata, load_safetensors, load_source
from .safetensors_io import save_streaming

UNUSED_FILE = "blinkdl_unused.safetensors"
_PROGRESS_BYTES = 256 * 2**20  # show a progress bar over tensors from this checkpoint size on


def detect_layout(state_dict):
    """(layout, version): layout is one of 'blinkdl', 'hf' (transformers / Hub remote code),
    'fla' (flash-linear-attention RWKV-7) or 'rwkv_hf'."""
    keys = list(state_dict)
    if not keys:
        raise ConversionError("the checkpoint holds no tensors")
    if any(k.startswith("model.layers.") and ".attn." in k for k in keys):
        return "fla", 7
    if any(k.startswith(("rwkv.", "rwkv5.", "rwkv6.")) for k in keys):
        return "hf", hf_version(state_dict)
    if any(k.startswith("model.blocks.") for k in keys):
        names = {blinkdl._to_blinkdl(k): v for k, v in state_dict.items()}
        return "rwkv_hf", blinkdl.detect_version(names)
    if "emb.weight" in state_dict or any(k.startswith("blocks.") for k in keys):
        return "blinkdl", blinkdl.detect_version(state_dict)
    raise ConversionError(
        f"unknown checkpoint layout: keys {keys[:8]} match none of BlinkDL (emb.weight, blocks.N.att.*), "
        "transformers/Hub (rwkv.blocks.N.attention.*), flash-linear-attention RWKV-7 "
        "(model.layers.N.attn.r_proj.*) or rwkv_hf (model.blocks.N.attn.*)")


def layout_name(layout, version):
    if layout == "hf":
        return {4: "transformers RwkvForCausalLM (model_type rwkv)", 5: "Hub remote code Rwkv5ForCausalLM",
                6: "Hub remote code Rwkv6ForCausalLM"}[version]
    return {"blinkdl": f"BlinkDL .pth (RWKV-{version})", "fla": "flash-linear-attention RWKV7ForCausalLM",
            "rwkv_hf": f"rwkv_hf (rwkv_hf_v{version})"}[layout]


def _config_overrides(layout, config_json):
    """Settings the shapes do not carry, from the source's config.json."""
    cfg, out = config_json or {}, {}
    if layout == "fla" and "norm_eps" in cfg:
        out["layer_norm_epsilon"] = cfg["norm_eps"]
    elif layout in ("hf", "rwkv_hf") and "layer_norm_epsilon" in cfg:
        out["layer_norm_epsilon"] = cfg["layer_norm_epsilon"]
    if layout == "rwkv_hf" and "group_norm_epsilon" in cfg:
        out["group_norm_epsilon"] = cfg["group_norm_epsilon"]
    # GroupNorm (ln_x) epsilon: BlinkDL's runtime uses 64e-5 for every head size, which is
    # rwkv_hf's default. The Hub v5 code's GroupNorm(out / head_size_divisor, eps=1e-5) and v6's
    # eps = 1e-5 * head_size_divisor**2 are the same function for divisor 8:
    # (x/8 - m/8) / sqrt(var/64 + 1e-5) = (x - m) / sqrt(var + 64e-5). fla uses head_dim * norm_eps
    # (64e-5 at head size 64; the fla-hub checkpoints come from BlinkDL's, trained with 64e-5).
    return out


def to_blinkdl_names(state_dict, layout):
    """(BlinkDL-named state dict, {BlinkDL name: source name}, notes)."""
    if layout == "blinkdl":
        return state_dict, {k: k for k in state_dict}, []
    if layout == "hf":
        return from_hf(state_dict)
    if layout == "fla":
        return from_fla(state_dict)
    out = {blinkdl._to_blinkdl(k): v for k, v in state_dict.items()}
    return out, {blinkdl._to_blinkdl(k): k for k in state_dict}, []


def _progress(state_dict, desc, items=None):
    items = list(state_dict.items()) if items is None else list(items)
    size = sum(t.numel() * t.element_size() for t in state_dict.values())
    if size < _PROGRESS_BYTES:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="tensor")


def _save_model(model, out, desc):
    """``model.save_pretrained(out)`` (config, generation config, tokenizer files), with
    model.safetensors written tensor by tensor from the model's own tensors instead of through
    safetensors' ``save_file``, which first copies every tensor into a ``bytes`` object: the
    weights here are views of a memory-mapped source, so this keeps the peak memory near one
    copy of the checkpoint. The file holds the tensors save_pretrained would save (tied weights
    removed), byte for byte what it would write."""
    from transformers import modeling_utils

    state_dict = model.state_dict()
    state_dict = modeling_utils.remove_tied_weights_from_state_dict(state_dict, model)
    state_dict = modeling_utils.revert_weight_conversion(model, state_dict)
    model.save_pretrained(out, state_dict={})  # everything but the weights (an empty weights file)
    weights = os.path.join(out, "model.safetensors")
    leftovers = [n for n in os.listdir(out) if n.startswith("model") and n.endswith((".safetensors", ".json"))
                 and n != "model.safetensors"]
    if leftovers:  # save_pretrained sharded an empty dict?  never seen; refuse rather than mix files
        raise RuntimeError(f"unexpected weight files from save_pretrained: {leftovers}")
    save_streaming(state_dict, weights, metadata={"format": "pt"},
                   progress=lambda keys: _progress(state_dict, desc, keys))


def _check_destination(dst, overwrite):
    if os.path.exists(dst):
        if os.path.isdir(dst) and not os.listdir(dst):
            return
        if not overwrite:
            raise ConversionError(f"{dst}: already exists; pass --overwrite to replace it")
        if os.path.isdir(dst) and not os.path.isfile(os.path.join(dst, "config.json")):
            raise ConversionError(f"{dst}: not a model folder; refusing to replace it even with --overwrite")


def _partial_path(dst):
    parent, name = os.path.split(os.path.abspath(dst))
    return os.path.join(parent, f".{name}.partial-{os.getpid()}")


def _finish(tmp, dst):
    if os.path.isdir(dst):
        shutil.rmtree(dst)
    elif os.path.exists(dst):
        os.remove(dst)
    os.replace(tmp, dst)


def _remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def convert(src, dst, *, trust_pickle=False, overwrite=False, verbose=True, config_overrides=None):
    """Convert ``src`` into ``dst`` and return a report dict. ``dst`` ending in ``.pth``: the
    rwkv_hf folder ``src`` -> BlinkDL ``.pth``; otherwise any supported checkpoint -> an rwkv_hf
    folder. ``trust_pickle`` allows pickles with arbitrary Python objects (runs their code).
    ``config_overrides``: config fields the checkpoint does not determine (e.g. ``post_norm``
    of a Vision-RWKV checkpoint without metadata), applied over what was detected."""
    src, dst = os.fspath(src), os.fspath(dst)
    _check_destination(dst, overwrite)
    tmp = _partial_path(dst)
    try:
        if dst.endswith(".pth"):
            report = _to_pth(src, tmp, trust_pickle)
        else:
            report = _to_folder(src, tmp, trust_pickle, dict(config_overrides or {}))
        _finish(tmp, dst)
    except BaseException:
        _remove(tmp)
        raise
    report["written"] = os.path.abspath(dst)
    if verbose:
        print_summary(report)
    return report


def _translate(error, original):
    """A from_blinkdl error, with the source's own key names."""
    msg = str(error)
    for name in sorted(original, key=len, reverse=True):
        if original[name] != name and f"'{name}'" in msg:
            msg = msg.replace(f"'{name}'", f"'{original[name]}'")
        elif original[name] != name and msg.startswith(name + ":"):
            msg = original[name] + msg[len(name):]
    return msg


def _load_with_extras(src, trust_pickle):
    """(state dict, config.json dict or None, the checkpoint's other top-level entries)."""
    if os.path.isfile(src) and not src.endswith(".safetensors"):
        state_dict, extras = load_pickle_with_metadata(src, trust_pickle)
        return state_dict, None, extras
    state_dict, config_json = load_source(src, trust_pickle)
    return state_dict, config_json, {}


def _to_folder(src, out, trust_pickle, overrides):
    state_dict, config_json, extras = _load_with_extras(src, trust_pickle)
    if clip.is_clip_checkpoint(state_dict):  # before vision: its image tower is a VRWKV6
        return _clip_to_folder(src, out, state_dict, config_json, extras, overrides)
    if vision.is_vision_checkpoint(state_dict):
        return _vision_to_folder(src, out, state_dict, config_json, extras, overrides)
    if restore.is_restore_checkpoint(state_dict):
        return _restore_to_folder(src, out, state_dict, config_json, extras, overrides)
    if pointrwkv.is_pointrwkv_checkpoint(state_dict):
        weights, _ = pointrwkv.normalize(state_dict)
        return _family_to_folder(src, out, "point", "official PointRWKV (state dict)", pointrwkv, weights,
                                 config_json, extras, overrides)
    try:
        layout, version = detect_layout(state_dict)
        names, original, notes = to_blinkdl_names(state_dict, layout)
    except ConversionError as e:
        raise ConversionError(f"{src}: {e}") from None
    try:
        config, ours, ignored = blinkdl.from_blinkdl(names, **_config_overrides(layout, config_json), **overrides)
    except (ValueError, KeyError, IndexError) as e:
        raise ConversionError(f"{src}: {_translate(e, original)}") from None
    cls = RWKV_LM_CLASSES[version][2]
    with torch.device("meta"):
        model = cls(config)
    placed = dict(ours)  # reshaped views of the source's (memory-mapped) tensors: no copies
    model.load_state_dict(placed, strict=True, assign=True)
    model.eval()
    _save_model(model, out, desc=f"writing {os.path.basename(src)}")
    if ignored:
        from safetensors.torch import save_file

        save_file({k: names[k].contiguous() for k in ignored}, os.path.join(out, UNUSED_FILE))
    has_tokenizer = any(os.path.exists(os.path.join(out, n)) for n in ("tokenizer.json", "tokenizer_config.json"))
    num_params = sum(t.numel() for t in placed.values())
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in placed.values()})
    report = dict(direction="to rwkv_hf", family="lm", source=os.path.abspath(src), layout=layout,
                  layout_name=layout_name(layout, version), version=version, config=config,
                  num_parameters=num_params, dtypes=dtypes, notes=notes,
                  ignored_by_math=[original.get(k, k) for k in ignored], has_tokenizer=has_tokenizer,
                  license=_source_license(src))
    render_model_card(report, src, model).save(os.path.join(out, "README.md"))
    return report


def _vision_to_folder(src, out, state_dict, config_json, extras, overrides):
    weights, discarded = vision.normalize(state_dict)
    if config_json:
        extras = dict(extras, **{"config.json": config_json})
    try:
        config, version, settings, notes = vision.config_from_state_dict(weights, extras, **overrides)
        model = vision.build_model(weights, config, version)
    except ConversionError as e:
        raise ConversionError(f"{src}: {e}") from None
    _save_model(model, out, desc=f"writing {os.path.basename(src)}")
    if settings.get("eval_size"):  # save_pretrained wrote the default for the config's size
        default_image_processor(config, settings["eval_size"]).save_pretrained(out)
    entries = list(getattr(extras, "discarded", ()))
    official = config_json is None or config_json.get("model_type") not in VRWKV_MODEL_TYPES
    report = dict(direction="to rwkv_hf", family="vision", source=os.path.abspath(src), version=version,
                  layout="vision", layout_name=("official Vision-RWKV (mmcls / InternImage)" if official
                                                else f"rwkv_hf ({config.model_type})"),
                  config=config, architecture=type(model).__name__,
                  num_parameters=sum(t.numel() for t in weights.values()),
                  dtypes=sorted({str(t.dtype).replace("torch.", "") for t in weights.values()}),
                  notes=notes, discarded_tensors=discarded, discarded_entries=entries,
                  license=_source_license(src))
    render_model_card(report, src, model).save(os.path.join(out, "README.md"))
    return report


def _restore_to_folder(src, out, state_dict, config_json, extras, overrides):
    weights, discarded = restore.normalize(state_dict)
    notes = [f"{len(discarded)} Omni-Shift conv5x5_reparam weights discarded: the fold of each Omni-Shift's "
             "branches, which rwkv_hf recomputes on every forward"] if discarded else []
    return _family_to_folder(src, out, "restore", "official Restore-RWKV (state dict)", restore, weights,
                             config_json, extras, overrides, discarded=discarded, extra_notes=notes)


def _clip_to_folder(src, out, state_dict, config_json, extras, overrides):
    weights, widened = clip.normalize(state_dict)
    notes = [f"{len(widened)} tensors widened to float32 (exactly): "
             f"{', '.join(sorted({k.rsplit('.', 1)[-1] for k in widened}))}"] if widened else []
    return _family_to_folder(src, out, "clip", "official RWKV-CLIP (state dict)", clip, weights, config_json,
                             extras, overrides, extra_notes=notes, dtypes=state_dict.values())


def _family_to_folder(src, out, family, official_name, converter, weights, config_json, extras, overrides,
                      discarded=None, extra_notes=(), dtypes=None):
    """The common part of the Restore-RWKV and RWKV-CLIP conversions: the model built through
    ``converter`` (its ``config_from_state_dict`` and ``build_model``), the folder written, the
    report and the model card. ``dtypes``: the tensors whose dtypes the report lists (the
    source's; ``weights`` by default)."""
    try:
        config, notes = converter.config_from_state_dict(weights, config_json, **overrides)
        model = converter.build_model(weights, config)
    except ConversionError as e:
        raise ConversionError(f"{src}: {e}") from None
    _save_model(model, out, desc=f"writing {os.path.basename(src)}")
    official = config_json is None or config_json.get("model_type") != config.model_type
    report = dict(direction="to rwkv_hf", family=family, source=os.path.abspath(src), layout=family,
                  layout_name=official_name if official else f"rwkv_hf ({config.model_type})",
                  config=config, architecture=type(model).__name__,
                  num_parameters=sum(t.numel() for t in weights.values()),
                  dtypes=sorted({str(t.dtype).replace("torch.", "") for t in (dtypes or weights.values())}),
                  notes=notes + list(extra_notes), discarded_tensors=discarded or {},
                  discarded_entries=list(getattr(extras, "discarded", ())), license=_source_license(src))
    render_model_card(report, src, model).save(os.path.join(out, "README.md"))
    return report


def _source_license(src):
    readme = os.path.join(src, "README.md") if os.path.isdir(src) else None
    if not readme or not os.path.isfile(readme):
        return None
    try:
        from huggingface_hub import ModelCard

        return ModelCard.load(readme).data.to_dict().get("license")
    except Exception:  # a README that is not a model card: no licence known
        return None


def render_model_card(report, src, model):
    """The README.md model card of a converted folder (``rwkv_hf.model_card``: the family's template
    in ``model_cards/``, with the source's name, layout, discarded tensors and notes)."""
    if report["family"] in ("vision", "clip", "point"):
        discarded = list(report["discarded_entries"]) + list(report["discarded_tensors"])
        source = dict(discarded=[f"`{k}`" for k in discarded], notes=report["notes"])
        extra = {}
    elif report["family"] == "restore":  # the derived folds: one line, not one per Omni-Shift
        folds = len(report["discarded_tensors"])
        discarded = [f"`{k}`" for k in report["discarded_entries"]]
        discarded += [f"{folds} `*.omni_shift.conv5x5_reparam.weight` (derived)"] if folds else []
        source = dict(discarded=discarded, notes=report["notes"])
        extra = {}
    else:
        source = dict(discarded=report["ignored_by_math"])
        extra = dict(tokenizer=report["has_tokenizer"])
    source.update(name=os.path.basename(os.path.normpath(src)), layout=report["layout_name"])
    return model_card(model, source=source, license=report["license"], **extra)


def _to_pth(src, out, trust_pickle):
    if not os.path.isdir(src):
        raise ConversionError(f"{src}: converting to .pth needs an rwkv_hf model folder as the source")
    state_dict, config_json = load_source(src, trust_pickle)
    model_type = config_json.get("model_type")
    if model_type == RestoreRwkvConfig.model_type:
        return _restore_to_pth(src, out, state_dict, config_json)
    if model_type == RwkvClipConfig.model_type:
        return _clip_to_pth(src, out, state_dict, config_json)
    if model_type == PointRwkvConfig.model_type:  # the official key layout already, checked by building the model
        return _family_to_pth(src, out, state_dict, config_json, "point", "PointRWKV", pointrwkv,
                              lambda model: model.state_dict(), lambda _: [])
    versions = {cls.model_type: v for v, cls in RWKV_LM_CONFIGS.items()}
    if model_type not in versions:
        raise ConversionError(f"{src}: model_type {model_type!r} is not an rwkv_hf language model "
                              f"({', '.join(versions)}), Restore-RWKV, RWKV-CLIP or PointRWKV; convert it to an "
                              "rwkv_hf folder first")
    version = versions[model_type]
    config = RWKV_LM_CONFIGS[version].from_pretrained(src)
    with torch.device("meta"):
        model = RWKV_LM_CLASSES[version][2](config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    if config.tie_word_embeddings and "head.weight" in missing:
        state_dict = dict(state_dict, **{"head.weight": state_dict["model.embeddings.weight"]})
        missing.remove("head.weight")
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ConversionError(f"{src}: weights do not match {model_type}: missing {missing[:10]}, "
                              f"unexpected {unexpected[:10]}")
    for key, tensor in state_dict.items():
        if tensor.shape != expected[key].shape:
            raise ConversionError(f"{src}: {key} has shape {tuple(tensor.shape)}, expected "
                                  f"{tuple(expected[key].shape)}")
    model.load_state_dict(state_dict, strict=True, assign=True)
    out_sd = blinkdl.to_blinkdl(model, copy=False)  # views of the mapped folder: torch.save streams them
    seen = set()
    for key, tensor in out_sd.items():  # tied weights: give the second name its own copy, as before
        ptr = tensor.untyped_storage().data_ptr()
        if ptr and ptr in seen:
            out_sd[key] = tensor.clone()
        seen.add(ptr)
    restored = []
    unused_path = os.path.join(src, UNUSED_FILE)
    if os.path.isfile(unused_path):
        for key, tensor in load_safetensors(unused_path).items():
            if key not in out_sd or out_sd[key].shape != tensor.shape:
                raise ConversionError(f"{unused_path}: {key} {tuple(tensor.shape)} does not fit this model")
            out_sd[key] = tensor
            restored.append(key)
    zeros = [k for k in blinkdl._V7_UNUSED if k in out_sd and k not in restored]
    torch.save(out_sd, out)
    num_params = sum(t.numel() for t in state_dict.values())
    return dict(direction="to BlinkDL .pth", source=os.path.abspath(src), layout="rwkv_hf",
                layout_name=layout_name("rwkv_hf", version), version=version, config=config,
                num_parameters=num_params, dtypes=sorted({str(t.dtype)[6:] for t in state_dict.values()}),
                notes=([f"restored {restored} from {UNUSED_FILE}"] if restored else [])
                + ([f"wrote {zeros} as zeros (unused by the math; the folder has no {UNUSED_FILE})"] if zeros else []),
                ignored_by_math=[], has_tokenizer=None, license=None)


def _restore_to_pth(src, out, state_dict, config_json):
    """An rwkv_hf Restore-RWKV folder -> the official state dict (``torch.save``), with the
    Omni-Shift folds the official model would compute (``restore.to_official``)."""
    def notes(official):
        folds = sum(k.endswith("conv5x5_reparam.weight") for k in official)
        return [f"wrote {folds} Omni-Shift conv5x5_reparam weights: the folds of their branches, as the official "
                "model computes them in evaluation mode"]
    return _family_to_pth(src, out, state_dict, config_json, "restore", "Restore-RWKV", restore,
                          restore.to_official, notes)


def _clip_to_pth(src, out, state_dict, config_json):
    """An rwkv_hf RWKV-CLIP folder -> the official state dict (``torch.save``; the official key
    layout already, checked by building the model), loadable by the official ``load_model_weight``."""
    return _family_to_pth(src, out, state_dict, config_json, "clip", "RWKV-CLIP", clip,
                          lambda model: model.state_dict(),
                          lambda _: ["the text tower's time_decay / time_faaaa are float32 (the official training "
                                     "keeps them in bf16; the official model casts them on loading)"])


def _family_to_pth(src, out, state_dict, config_json, family, official_name, converter, to_official, notes):
    """The common part of the Restore-RWKV and RWKV-CLIP conversions back: the folder's model
    rebuilt through ``converter`` (its checks included), ``to_official(model)`` saved, the report."""
    weights, _ = converter.normalize(state_dict)
    try:
        config, _ = converter.config_from_state_dict(weights, config_json)
        model = converter.build_model(weights, config)
    except ConversionError as e:
        raise ConversionError(f"{src}: {e}") from None
    official = to_official(model)
    torch.save(official, out)
    return dict(direction=f"to the official {official_name} .pth", family=family, source=os.path.abspath(src),
                layout="rwkv_hf", layout_name=f"rwkv_hf ({config.model_type})", config=config,
                architecture=type(model).__name__, num_parameters=sum(t.numel() for t in weights.values()),
                dtypes=sorted({str(t.dtype).replace("torch.", "") for t in weights.values()}),
                notes=notes(official), discarded_tensors={}, discarded_entries=[])


def _print_image_model_summary(report, model_line):
    """The summary of a Vision-RWKV or Restore-RWKV conversion (``model_line``: the model in words)."""
    lines = [f"rwkv-hf convert: {report['direction']}",
             f"  source:     {report['source']}",
             f"  layout:     {report['layout_name']}",
             f"  model:      {model_line}",
             f"  parameters: {report['num_parameters']:,} ({_human(report['num_parameters'])}), "
             f"{'/'.join(report['dtypes'])}"]
    entries, tensors = report["discarded_entries"], report["discarded_tensors"]
    where = "outside backbone./head. " if report["family"] == "vision" else ""
    lines.append("  discarded:  none" if not (entries or tensors) else
                 f"  discarded:  {len(entries)} checkpoint entries {entries[:8]}, {len(tensors)} tensors "
                 f"{where}{list(tensors)[:8]}{' ...' if len(tensors) > 8 else ''}")
    lines += [f"  note:       {n}" for n in report["notes"]]
    lines.append(f"  written:    {report['written']}")
    print("\n".join(lines))


def print_summary(report):
    config = report["config"]
    if report.get("family") == "vision":
        return _print_image_model_summary(
            report, f"{report['architecture']}, {config.num_hidden_layers} blocks, width {config.hidden_size}, "
                    f"patch {config.patch_size}, post_norm={config.post_norm}, "
                    f"layer scale={config.layer_scale_init_value is not None}, key_norm={config.key_norm}")
    if report.get("family") == "clip":
        v, t = config.vision_config, config.text_config
        return _print_image_model_summary(
            report, f"{report['architecture']}: image VRWKV6 {v.num_hidden_layers} blocks, width {v.hidden_size} "
                    f"({v.num_heads} heads of {v.head_size}), patch {v.patch_size}, {v.image_hw[0]} px; text "
                    f"{t.num_hidden_layers} blocks ({t.num_heads} heads of {t.head_size}), vocabulary {t.vocab_size}")
    if report.get("family") == "point":
        return _print_image_model_summary(
            report, f"{report['architecture']}, width {config.hidden_size} ({config.num_heads} heads), blocks "
                    f"{config.depths}, centres {config.num_groups}, patches {config.group_sizes}, graph "
                    f"neighbours {config.k_neighbors}" + (f", {config.num_labels} classes"
                                                          if report["architecture"].endswith("Classification") else ""))
    if report.get("family") == "restore":
        return _print_image_model_summary(
            report, f"{report['architecture']}, width {config.hidden_size}, blocks {config.num_blocks} + "
                    f"{config.num_refinement_blocks} refinement, channels {config.num_channels} -> "
                    f"{config.out_channels}")
    version = report["version"]
    heads = "" if version == 4 else f", {config.num_heads} heads of {config.head_size}"
    lines = [f"rwkv-hf convert: {report['direction']}",
             f"  source:     {report['source']}",
             f"  layout:     {report['layout_name']}",
             f"  model:      RWKV-{version}, {config.num_hidden_layers} layers, width {config.hidden_size}{heads}, "
             f"FFN {config.intermediate_size}, vocabulary {config.vocab_size}",
             f"  parameters: {report['num_parameters']:,} ({_human(report['num_parameters'])}), "
             f"{'/'.join(report['dtypes'])}"]
    if report["direction"] == "to rwkv_hf":
        ignored = report["ignored_by_math"]
        lines.append("  discarded:  none" if not ignored else
                     f"  unused by the math (kept in {UNUSED_FILE}, restored when converting back): {ignored}")
        lines.append("  tokenizer:  written" if report["has_tokenizer"] else
                     f"  tokenizer:  none written (no tokenizer known for vocabulary {config.vocab_size}; "
                     "save yours into the folder)")
    lines += [f"  note:       {n}" for n in report["notes"]]
    lines.append(f"  written:    {report['written']}")
    print("\n".join(lines))
