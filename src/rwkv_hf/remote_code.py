"""Self-contained remote code for saved folders (``trust_remote_code=True`` without rwkv_hf).

``save_pretrained`` of every rwkv_hf model writes, next to the weights, flat copies of the
family's configuration and modeling files and of the operator layer, and an ``auto_map`` in
``config.json``, so the folder loads anywhere with only torch and transformers::

    AutoModelForCausalLM.from_pretrained(folder_or_repo, trust_remote_code=True)

The copies are the package's own source files with the package-relative imports rewritten
for a flat folder (transformers copies a remote module's ``from .x import y`` siblings);
nothing is duplicated by hand. The modeling file first tries ``from rwkv_hf import ops``:
where rwkv_hf is installed the remote code runs on its operator layer (CUDA extension,
fast CPU kernels); elsewhere on the bundled pure-PyTorch operators (``wkv_ops*.py``). Users
who have rwkv_hf need no remote code at all: the model types are registered on import and
transformers prefers the registered classes.
"""
import os
import re

_PACKAGE = os.path.dirname(os.path.abspath(__file__))

# The operator layer, flattened: package module -> file name in the folder.
OPS_FILES = {
    "ops/__init__.py": "wkv_ops.py",
    "ops/reference.py": "wkv_ops_reference.py",
    "ops/torch_point.py": "wkv_ops_torch_point.py",
    "ops/torch_wkv4.py": "wkv_ops_torch_wkv4.py",
    "ops/torch_wkv6.py": "wkv_ops_torch_wkv6.py",
    "ops/torch_wkv7.py": "wkv_ops_torch_wkv7.py",
    "ops/cpu_backend.py": "wkv_ops_cpu_backend.py",
    "ops/cuda_backend.py": "wkv_ops_cuda_backend.py",
    "ops/custom_ops.py": "wkv_ops_custom_ops.py",
}

# Per family: the files to copy and the Auto classes of auto_map (class name templates).
FAMILIES = {
    "lm": dict(
        files={"lm/configuration_rwkv_lm.py": "configuration_rwkv_lm.py",
               "lm/modeling_rwkv_lm.py": "modeling_rwkv_lm.py"},
        config_module="configuration_rwkv_lm", modeling_module="modeling_rwkv_lm",
        auto=("AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification")),
    "vision": dict(
        files={"vision/configuration_vrwkv.py": "configuration_vrwkv.py",
               "vision/image_processing_vrwkv.py": "image_processing_vrwkv.py",
               "vision/modeling_vrwkv.py": "modeling_vrwkv.py"},
        config_module="configuration_vrwkv", modeling_module="modeling_vrwkv",
        auto=("AutoModel", "AutoModelForImageClassification", "AutoBackbone")),
    "restore": dict(
        files={"restore/configuration_restore_rwkv.py": "configuration_restore_rwkv.py",
               "restore/modeling_restore_rwkv.py": "modeling_restore_rwkv.py"},
        config_module="configuration_restore_rwkv", modeling_module="modeling_restore_rwkv",
        auto=("AutoModel", "AutoModelForImageToImage")),
    "clip": dict(  # the image tower is a VRWKV6: the vision files come along
        files={"vision/configuration_vrwkv.py": "configuration_vrwkv.py",
               "vision/image_processing_vrwkv.py": "image_processing_vrwkv.py",
               "vision/modeling_vrwkv.py": "modeling_vrwkv.py",
               "clip/configuration_rwkv_clip.py": "configuration_rwkv_clip.py",
               "clip/modeling_rwkv_clip.py": "modeling_rwkv_clip.py"},
        config_module="configuration_rwkv_clip", modeling_module="modeling_rwkv_clip",
        auto=("AutoModel", "AutoModelForZeroShotImageClassification")),
    "point": dict(
        files={"point/configuration_pointrwkv.py": "configuration_pointrwkv.py",
               "point/modeling_pointrwkv.py": "modeling_pointrwkv.py"},
        config_module="configuration_pointrwkv", modeling_module="modeling_pointrwkv",
        auto=("AutoModel",)),
}

# Package-level modules bundled for every family: package module -> file name in the folder.
SHARED_FILES = {"hub_mixin.py": "rwkv_hf_hub_mixin.py", "modeling_utils.py": "rwkv_hf_modeling_utils.py"}

_MODULE_TAIL = "\n\n# (rwkv_hf bundle) this module, for `from .<file> import _module as <name>`\n" \
               "_module = __import__(\"sys\").modules[__name__]\n"


def _ops_flat_name(name):
    return OPS_FILES[f"ops/{name}.py"][:-3]


def flatten_source(text, in_ops=False, package_level=False):
    """``text`` of a package module rewritten for a flat remote-code folder (``in_ops``: a module
    of the operator layer; ``package_level``: a module directly in rwkv_hf/)."""
    def ops_import(m):
        indent = m.group(1)
        return (f"{indent}try:  # rwkv_hf installed: its operator layer (CUDA extension, fast CPU kernels)\n"
                f"{indent}    from rwkv_hf import ops\n"
                f"{indent}except ImportError:  # only torch + transformers: the bundled pure-PyTorch operators\n"
                f"{indent}    from .wkv_ops import _module as ops")

    text = re.sub(r"^([ \t]*)from \.\. import ops[ \t]*$", ops_import, text, flags=re.M)
    for module, flat in SHARED_FILES.items():  # bundled package-level modules
        text = re.sub(rf"^([ \t]*)from \.\.{module[:-3]} import ", rf"\1from .{flat[:-3]} import ", text, flags=re.M)
    if package_level:  # a package-level module: `from . import x` / `from .x import` are rwkv_hf's
        text = re.sub(r"^([ \t]*)from \. import (\w+)", r"\1from rwkv_hf import \2", text, flags=re.M)
        text = re.sub(r"^([ \t]*)from \.(\w+) import ", r"\1from rwkv_hf.\2 import ", text, flags=re.M)
    if in_ops:  # sibling modules of the operator layer: `from . import reference as _reference`
        text = re.sub(r"^([ \t]*)from \. import (\w+)(?: as (\w+))?[ \t]*$",
                      lambda m: f"{m.group(1)}from .{_ops_flat_name(m.group(2))} import _module as "
                                f"{m.group(3) or m.group(2)}", text, flags=re.M)
    # another family's module (bundled with this family: RWKV-CLIP's VRWKV6 files)
    text = re.sub(r"^([ \t]*)from \.\.\w+\.(\w+) import ", r"\1from .\2 import ", text, flags=re.M)
    # other package modules (used inside try blocks, optional without rwkv_hf)
    text = re.sub(r"^([ \t]*)from \.\.(\w+) import ", r"\1from rwkv_hf.\2 import ", text, flags=re.M)
    leftover = re.findall(r"^[ \t]*from \.\.+\S* import .*$|^[ \t]*from \. import .*$", text, flags=re.M)
    if leftover:
        raise ValueError(f"cannot flatten these imports for remote code: {leftover}")
    return text


def bundle_files(family):
    """{file name in the folder: source text} of a family's remote code."""
    spec = FAMILIES[family]
    out = {}
    for src, dst in spec["files"].items():
        with open(os.path.join(_PACKAGE, src), encoding="utf-8") as f:
            out[dst] = flatten_source(f.read())
        siblings = set(re.findall(r"^[ \t]*from \.(\w+) import ", out[dst], flags=re.M))
        missing = {m for m in siblings if m + ".py" not in spec["files"].values()} - \
            {f[:-3] for f in (*OPS_FILES.values(), *SHARED_FILES.values())}
        if missing:
            raise ValueError(f"{src} imports {sorted(missing)}, which the {family!r} bundle does not include")
    for src, dst in OPS_FILES.items():
        with open(os.path.join(_PACKAGE, src), encoding="utf-8") as f:
            out[dst] = flatten_source(f.read(), in_ops=True) + _MODULE_TAIL
    for src, dst in SHARED_FILES.items():
        with open(os.path.join(_PACKAGE, src), encoding="utf-8") as f:
            out[dst] = flatten_source(f.read(), package_level=True)
    return out


def auto_map(family, config_class, classes):
    """The ``auto_map`` of ``config.json``: AutoConfig and the family's Auto classes, by the
    class names of this version (``classes``: {Auto class name: model class})."""
    spec = FAMILIES[family]
    mapping = {"AutoConfig": f"{spec['config_module']}.{config_class.__name__}"}
    for auto in spec["auto"]:
        if auto in classes:
            mapping[auto] = f"{spec['modeling_module']}.{classes[auto].__name__}"
    return mapping


def write_bundle(family, folder):
    """Write the family's flat remote-code files into ``folder``."""
    for name, text in bundle_files(family).items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write(text)

