"""Model cards (``README.md``) for rwkv_hf models, rendered with huggingface_hub's ``ModelCard``
from the family templates in ``model_cards/`` (``rwkv_lm.md``: RWKV-4 ... RWKV-7 language
models; ``vrwkv.md``: Vision-RWKV / VRWKV6; ``restore_rwkv.md``: Restore-RWKV).

    from rwkv_hf.model_card import model_card, write_model_card
    card = model_card(model, repo_id="me/tiny", license="apache-2.0",
                      eval_results=[{"task_type": "image-classification", "dataset_type": "digits",
                                     "dataset_name": "sklearn digits (held-out 20%)",
                                     "metric_type": "accuracy", "metric_value": 0.9916}])
    card.save("folder/README.md")

The card's metadata (``library_name``, ``pipeline_tag``, ``tags``, ``license``, ``base_model``,
``datasets``, ``metrics``, ``model-index``) is a ``huggingface_hub.ModelCardData``; the body
states the model's version, size and evaluation numbers. ``rwkv-hf convert`` renders its
cards through :func:`model_card` too (the ``source`` argument).
"""
import json
import os

import torch

CODENAMES = {4: "Dove/Raven", 5: "Eagle", 6: "Finch", 7: "Goose"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def template_path(name):
    """Path of a template in ``model_cards/`` (source tree or editable install: next to ``src/``;
    installed wheel: the package data ``rwkv_hf/model_cards``)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (os.path.join(here, "model_cards"), os.path.join(here, os.pardir, os.pardir, "model_cards")):
        path = os.path.normpath(os.path.join(folder, name))
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"model card template {name!r} not found (looked next to {here})")


def human_size(n):
    """``1907328`` -> ``'1.91M'``."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _family(config):
    """('lm' | 'vision' | 'restore' | 'clip' | 'point', version (None but for the language models and
    Vision-RWKV), the family's classes) of an rwkv_hf config."""
    from .lm import RWKV_LM_CLASSES, RWKV_LM_CONFIGS
    from .restore import RESTORE_RWKV_CLASSES
    from .vision import VRWKV_CLASSES, VRWKV_MODEL_TYPES

    lm_types = {cfg.model_type: v for v, cfg in RWKV_LM_CONFIGS.items()}
    model_type = getattr(config, "model_type", None)
    if model_type in lm_types:
        return "lm", lm_types[model_type], RWKV_LM_CLASSES[lm_types[model_type]]
    if model_type in VRWKV_MODEL_TYPES:
        return "vision", VRWKV_MODEL_TYPES[model_type], VRWKV_CLASSES[VRWKV_MODEL_TYPES[model_type]]
    restore_type = RESTORE_RWKV_CLASSES[0].model_type
    if model_type == restore_type:
        return "restore", None, RESTORE_RWKV_CLASSES
    from .clip import RwkvClipConfig, RwkvClipModel, RwkvClipTextConfig, RwkvClipTextModel
    if model_type == RwkvClipConfig.model_type:
        return "clip", None, (RwkvClipConfig, RwkvClipModel, RwkvClipModel)
    if model_type == RwkvClipTextConfig.model_type:
        return "clip", None, (RwkvClipTextConfig, RwkvClipTextModel, RwkvClipTextModel)
    from .point import POINTRWKV_CLASSES
    if model_type == POINTRWKV_CLASSES[0].model_type:
        return "point", None, POINTRWKV_CLASSES
    known = list(lm_types) + list(VRWKV_MODEL_TYPES) + [restore_type, RwkvClipConfig.model_type,
                                                         RwkvClipTextConfig.model_type, POINTRWKV_CLASSES[0].model_type]
    raise ValueError(f"no model card template for model_type {model_type!r} (known: {', '.join(known)})")


def _model_class(config, classes):
    """The model class a bare config stands for: its ``architectures`` entry, else the causal LM /
    image classifier / restorer of the family."""
    names = {cls.__name__: cls for cls in classes[1:]}
    for name in getattr(config, "architectures", None) or ():
        if name in names:
            return names[name]
    return classes[2]  # ForCausalLM / ForImageClassification / ForImageRestoration


def _pipeline_tag(family, architecture):
    if family == "lm":
        for suffix, tag in (("ForCausalLM", "text-generation"), ("ForSequenceClassification", "text-classification")):
            if architecture.endswith(suffix):
                return tag
        return "feature-extraction"
    if family == "restore":
        return "image-to-image" if architecture.endswith("ForImageRestoration") else "image-feature-extraction"
    if family == "clip":
        return "feature-extraction" if architecture.endswith("TextModel") else "zero-shot-image-classification"
    if family == "point":  # the Hub has no point-cloud task
        return None
    return "image-classification" if architecture.endswith("ForImageClassification") else "image-feature-extraction"


def _format_value(value):
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def to_eval_results(eval_results):
    """``huggingface_hub.EvalResult`` list from EvalResults or plain dicts with EvalResult's fields
    (``task_type``, ``dataset_type``, ``dataset_name``, ``metric_type``, ``metric_value``, and any
    of its optional ones, e.g. ``dataset_split``, ``metric_name``)."""
    from huggingface_hub import EvalResult

    out = []
    for r in eval_results or ():
        if isinstance(r, EvalResult):
            out.append(r)
            continue
        try:
            out.append(EvalResult(**r))
        except TypeError as e:
            raise ValueError(f"bad evaluation result {r!r}: {e}") from None
    return out


def eval_results_from_json(path):
    """Evaluation results (dicts for :func:`model_card`) from the ``eval.json`` that rwkv_hf's
    training examples write next to the shipped tiny models (a folder or the file itself):
    the language model's validation perplexity / bits per byte, the digit classifier's
    held-out accuracy. Raises ``ValueError`` for other formats."""
    if os.path.isdir(path):
        path = os.path.join(path, "eval.json")
    with open(path, encoding="utf-8") as f:
        ev = json.load(f)
    if "heldout_accuracy" in ev:
        name = f"scikit-learn digits (held-out, {ev['heldout_images']} images)" if "heldout_images" in ev \
            else "scikit-learn digits (held-out)"
        return [dict(task_type="image-classification", dataset_type="sklearn-digits", dataset_name=name,
                     dataset_split="heldout", metric_type="accuracy", metric_value=ev["heldout_accuracy"])]
    if isinstance(ev.get("validation"), dict) and "perplexity" in ev["validation"]:
        val, source = ev["validation"], (ev.get("corpus") or {}).get("source", "validation text")
        common = dict(task_type="text-generation", dataset_type=source,
                      dataset_name=f"{source} (held-out topics)", dataset_split="validation")
        out = [dict(common, metric_type="perplexity", metric_value=val["perplexity"])]
        if "bits_per_byte" in val:
            out.append(dict(common, metric_type="bits_per_byte", metric_name="bits per byte",
                            metric_value=val["bits_per_byte"]))
        return out
    raise ValueError(f"{path}: not an eval.json format rwkv_hf knows (heldout_accuracy or validation.perplexity)")


def model_card(model_or_config, *, eval_results=None, base_model=None, license=None, datasets=None,
               source=None, repo_id=None, notes=None, tags=None, tokenizer=None, model_name=None):
    """The ``huggingface_hub.ModelCard`` of an rwkv_hf model (or of a bare config).

    Args:
        model_or_config: an rwkv_hf model (a PEFT wrapper is unwrapped; adapter weights then count
            as parameters) or its config. The family
            template follows ``config.model_type``; the parameter count comes from the model, or
            from the config's class instantiated on the meta device (no memory).
        eval_results: ``huggingface_hub.EvalResult`` objects or dicts with its fields (at least
            ``task_type``, ``dataset_type``, ``dataset_name``, ``metric_type``, ``metric_value``):
            the card's ``model-index`` and an Evaluation table.
        base_model, license, datasets: card metadata (Hub ids / licence id), also stated in the body.
        source: set by ``rwkv-hf convert``: a dict with ``name`` (the source file or folder name),
            ``layout`` (its layout in words), optionally ``discarded`` (list of tensor/entry names
            left out of the model) and ``notes`` (list of strings); the card then has a
            Conversion section.
        repo_id: the Hub repository the card is for (usage snippets; the model-index name).
        notes: extra Markdown (a string or a list of paragraphs) for a Notes section.
        tags: extra tags after the family's (``rwkv``, ``rwkv-v7`` / ``vision-rwkv``, ..., ``rwkv_hf``).
        tokenizer: for language models, whether the folder ships a tokenizer (None: not stated).
        model_name: the card's title and model-index name (default: the repo name, else
            e.g. ``RWKV-7 1.91M``).
    """
    from huggingface_hub import ModelCard, ModelCardData

    import rwkv_hf

    model = model_or_config
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = model.get_base_model()
    is_model = isinstance(model, torch.nn.Module)
    config = model.config if is_model else model
    family, version, classes = _family(config)
    if is_model:
        architecture = type(model).__name__
        params = list(model.parameters())  # shared (tied) tensors once
        num_parameters = sum(p.numel() for p in params)
        dtypes = sorted({str(p.dtype).replace("torch.", "") for p in params})
    else:
        cls = _model_class(config, classes)
        architecture = cls.__name__
        with torch.device("meta"):
            num_parameters = sum(p.numel() for p in cls(config).parameters())
        dtype = getattr(config, "dtype", None)
        dtypes = [str(dtype).replace("torch.", "")] if dtype else []
    pipeline_tag = _pipeline_tag(family, architecture)
    if family == "lm":
        base_title = f"RWKV-{version} {human_size(num_parameters)}"
        family_tags = ["rwkv", f"rwkv-v{version}", "rwkv_hf"]
    elif family == "clip":
        base_title = f"RWKV-CLIP {human_size(num_parameters)}"
        family_tags = ["rwkv", "rwkv-clip", "clip", "zero-shot-image-classification", "rwkv_hf"]
    elif family == "point":
        base_title = f"PointRWKV {human_size(num_parameters)}"
        family_tags = ["rwkv", "pointrwkv", "point-cloud", "rwkv_hf"]
    elif family == "restore":
        base_title = f"Restore-RWKV {human_size(num_parameters)}"
        family_tags = ["rwkv", "restore-rwkv", "image-restoration", "rwkv_hf"]
    else:
        base_title = f"Vision-RWKV{'6' if version == 6 else ''} {human_size(num_parameters)}"
        family_tags = ["rwkv", "vision-rwkv", f"vrwkv{'6' if version == 6 else ''}", "rwkv_hf", "timm"]
    if model_name is None:
        model_name = repo_id.rstrip("/").split("/")[-1] if repo_id else base_title
    title = f"{model_name} (converted from {source['name']})" if source else model_name
    results = to_eval_results(eval_results)
    data = ModelCardData(
        library_name="transformers", pipeline_tag=pipeline_tag, tags=family_tags + list(tags or ()),
        license=license, base_model=base_model, datasets=[datasets] if isinstance(datasets, str) else datasets,
        metrics=sorted({r.metric_type for r in results}) or None,
        eval_results=results or None, model_name=model_name if results else None)
    cell = lambda x: str(x).replace("|", "\\|")  # noqa: E731  (a table cell)
    rows = [dict(task=cell(r.task_name or r.task_type), dataset=cell(r.dataset_name), split=cell(r.dataset_split or ""),
                 metric=cell(r.metric_name or r.metric_type), value=cell(_format_value(r.metric_value)))
            for r in results]
    if source:
        source = dict(source, discarded=list(source.get("discarded") or ()), notes=list(source.get("notes") or ()))
    kw = dict(model_name=title, version=version, model_type=config.model_type, architecture=architecture,
              pipeline_tag=pipeline_tag, num_parameters=f"{num_parameters:,}",
              hidden_size=getattr(config, "projection_dim", None) or config.hidden_size,
              num_parameters_human=human_size(num_parameters), dtypes=", ".join(dtypes),
              repo_path=repo_id or "path/to/this/folder", rwkv_hf_version=rwkv_hf.__version__,
              license=license, base_models=[base_model] if isinstance(base_model, str) else list(base_model or ()),
              datasets=data.datasets, source=source,
              eval_rows=rows, notes=[notes] if isinstance(notes, str) else list(notes or ()))
    if family in ("lm", "vision"):
        kw.update(num_layers=config.num_hidden_layers, intermediate_size=config.intermediate_size)
    if family == "lm":
        kw.update(codename=CODENAMES[version], vocab_size=config.vocab_size, tokenizer=tokenizer,
                  heads="n/a (RWKV-4 has per-channel state)" if version == 4
                  else f"{config.num_heads} x {config.head_size}")
        template = "rwkv_lm.md"
    elif family == "restore":
        kw.update(num_channels=config.num_channels, out_channels=config.out_channels, residual=config.residual,
                  widths=" / ".join(str(config.level_width(i)) for i in range(1, 5)),
                  num_blocks=" / ".join(map(str, config.num_blocks)),
                  num_refinement_blocks=config.num_refinement_blocks, hidden_rate=config.hidden_rate,
                  recurrence=config.recurrence)
        template = "restore_rwkv.md"
    elif family == "clip":
        text = getattr(config, "text_config", config)
        vision = getattr(config, "vision_config", None)
        kw.update(text=text, vision=vision, text_only=vision is None,
                  image_size=vision and "x".join(map(str, vision.image_hw)))
        template = "rwkv_clip.md"
    elif family == "point":
        classifier = architecture.endswith("ForPointCloudClassification")
        segmenter = architecture.endswith("ForPointCloudSegmentation")
        kw.update(num_heads=config.num_heads, graph_iterations=config.graph_iterations, classifier=classifier,
                  segmenter=segmenter, num_shape_classes=config.num_shape_classes,
                  num_labels=(f"{config.num_labels} parts of {config.num_shape_classes} object categories"
                              if segmenter else config.num_labels if classifier else "none (backbone)"),
                  min_points=max(config.num_groups),
                  scales="; ".join(f"{g} / {s} / {k} / {d}" for g, s, k, d in zip(
                      config.num_groups, config.group_sizes, config.k_neighbors, config.depths)))
        template = "pointrwkv.md"
    else:
        kw.update(family="VRWKV6" if version == 6 else "VRWKV", patch_size=config.patch_size,
                  image_size="x".join(map(str, config.image_hw)), grid="x".join(map(str, config.patch_grid)),
                  wkv=(f"bidirectional RWKV-6 (per-token decay, {config.num_heads} heads of {config.head_size})"
                       if version == 6 else "bidirectional RWKV-4 (per-channel decay)"),
                  switches=" / ".join(str(x) for x in (config.post_norm, config.layer_scale_init_value is not None,
                                                        config.key_norm)),
                  out_indices=sorted({max(1, round(config.num_hidden_layers * k / 4)) for k in range(1, 5)}),
                  num_labels=config.num_labels if pipeline_tag == "image-classification" else "none (backbone)")
        template = "vrwkv.md"
    return ModelCard.from_template(data, template_path=template_path(template), **kw)


def write_model_card(model, folder, **kwargs):
    """Write ``folder/README.md`` from :func:`model_card` (``kwargs`` go to it) unless the folder
    already has a README.md. For language models, whether a tokenizer is included is read from
    the folder's files when ``tokenizer`` is not given. Returns the path written, or None."""
    path = os.path.join(folder, "README.md")
    if os.path.exists(path):
        return None
    if "tokenizer" not in kwargs:
        kwargs["tokenizer"] = any(os.path.exists(os.path.join(folder, n)) for n in TOKENIZER_FILES)
    card = model_card(model, **kwargs)
    card.save(path)
    return path
