"""Reading checkpoints safely: ``.pth``/``.bin`` pickles (``torch.load(weights_only=True)``),
``.safetensors`` files and Hugging Face folders (config.json + weights, sharded or not).

Training checkpoints (mmcv/mmseg, InternImage, plain ``torch.save`` scripts) hold Python
objects next to the weights: mmcv's ``meta`` dict (numpy scalars, ConfigDicts), a yacs
``CfgNode``, optimizer states, an ``argparse.Namespace``... Such a pickle is read WITHOUT
executing anything from it: every global that torch's weights-only unpickler does not know is
replaced by an inert placeholder (``PickledObject``) that records its dotted name, its
constructor arguments and its state, and never imports or calls what the file names.
``load_pickle_with_metadata`` returns those entries as plain Python (``extras``).
Globals of modules torch blocks outright (``sys``, ``os``, ``posix``, ``nt``: ``os.system``...)
cannot be replaced; such files are refused. ``trust_pickle=True`` (``--trust-pickle``) loads
with the full pickle machinery instead, which runs code from the file.
"""
import json
import os
import pickle
import re
import struct
from collections import OrderedDict
from collections.abc import Mapping

import torch


class ConversionError(ValueError):
    """A checkpoint that cannot be read or mapped; the message names the file and the key."""


def place_weights(cls, config, weights, shown=lambda key: key):
    """``cls(config)`` holding ``weights`` as they are (built on the meta device, the tensors
    assigned, no copies), in eval mode. Unknown or missing keys and wrong shapes raise a
    ConversionError naming them as ``shown(key)`` (the source's own names)."""
    with torch.device("meta"):
        model = cls(config)
    expected = model.state_dict()
    unexpected = sorted(shown(k) for k in set(weights) - set(expected))
    missing = sorted(shown(k) for k in set(expected) - set(weights))
    if unexpected or missing:
        raise ConversionError(f"the weights do not fit {cls.__name__}: unknown tensors {unexpected[:10]}, "
                              f"missing {missing[:10]}")
    for key, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ConversionError(f"{shown(key)} has shape {tuple(tensor.shape)}, expected "
                                  f"{tuple(expected[key].shape)}")
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval()


def require(weights, key, family):
    """``weights[key]``, or a ConversionError saying the ``family`` checkpoint is incomplete."""
    if key not in weights:
        raise ConversionError(f"not a complete {family} checkpoint: {key!r} is missing")
    return weights[key]


def make_config(cls, kw, overrides):
    """``cls(**kw)`` with ``overrides`` (``--set``) applied last; a ConversionError saying why when
    the values do not make a valid config."""
    try:
        return cls(**{**kw, **overrides})
    except (TypeError, ValueError) as e:
        raise ConversionError(f"cannot build a {cls.__name__} from this checkpoint: {e}") from None


def count_numbered(weights, prefix):
    """How many blocks ``{prefix}0.``, ``{prefix}1.`` ... the keys of ``weights`` hold (0 when
    none); a ConversionError when they are not numbered 0..N-1."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    found = sorted({int(m.group(1)) for k in weights for m in [pattern.match(k)] if m})
    if found != list(range(len(found))):
        raise ConversionError(f"the checkpoint's {prefix}N blocks are not numbered 0..N-1: {found[:10]}")
    return len(found)


def strip_wrapper_prefixes(key):
    """A state-dict key without the prefixes of DDP (``module.``) and torch.compile (``_orig_mod.``)."""
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


# Globals torch's weights-only unpickler does not allow by default but that real RWKV
# checkpoints need. BlinkDL's .pth files and transformers' pytorch_model.bin files hold only
# tensors in (ordered) dicts, which torch already allows, so the list is empty; add to it
# only objects whose unpickling cannot run code.
SAFE_GLOBALS = []

# At most this many distinct unknown globals are replaced by placeholders in one file.
MAX_PLACEHOLDERS = 64

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                   "pytorch_model.bin", "pytorch_model.bin.index.json")

_PH_NAME = "__unpickled_placeholder__"  # key in a dict-like placeholder's __dict__: its dotted name


# ----------------------------------------------------------------- placeholders


class _PlaceholderType(type):
    def __repr__(cls):
        return f"<unpickled placeholder class {cls.placeholder_name}>"


class PickledObject(metaclass=_PlaceholderType):
    """An object a pickle asked for, not rebuilt: ``name`` is the dotted global the file names,
    ``args`` what it was to be called with (REDUCE/NEWOBJ), ``state`` its BUILD state. The
    class is a placeholder per dotted name, created by the loader; nothing it names is imported
    or called."""

    placeholder_name = "?"

    def __new__(cls, *args):
        self = object.__new__(cls)
        self.__dict__["args"] = args
        self.__dict__["state"] = None
        return self

    def __init__(self, *args):
        pass

    def __setstate__(self, state):  # BUILD
        self.__dict__["state"] = state

    @property
    def name(self):
        return type(self).placeholder_name

    def __repr__(self):
        return f"<unpickled placeholder for {self.name}>"


class PickledList(list, PickledObject):
    """A placeholder for a ``list`` subclass: the items are kept (torch's unpickler appends only
    to lists)."""

    def __new__(cls, *args):
        self = list.__new__(cls)
        self.__dict__["args"] = args
        self.__dict__["state"] = None
        return self

    def __init__(self, *args):
        pass


def _dict_like_new(cls, *args):
    # torch's unpickler fills only exact dict/OrderedDict/Counter (SETITEMS), so a dict subclass
    # (yacs CfgNode, addict/mmcv ConfigDict, defaultdict) becomes a plain OrderedDict; its BUILD
    # state lands in the OrderedDict's __dict__ (torch: ``inst.__dict__.update(state)``).
    d = OrderedDict()
    d.__dict__[_PH_NAME] = cls.placeholder_name
    return d


class _Placeholders:
    """The placeholder classes of one load, by dotted name; ``kinds`` says which are dict-like
    or list-like (learned from the unpickler's refusals)."""

    def __init__(self):
        self.classes = {}

    def get(self, name, kind="object"):
        cls = self.classes.get(name)
        if cls is None or cls.kind != kind:
            cls = self._make(name, kind)
            self.classes[name] = cls
        return cls

    def _make(self, name, kind):
        attrs = {"placeholder_name": name, "kind": kind, "__module__": __name__,
                 "__qualname__": f"PickledObject[{name}]"}
        if kind == "dict":
            attrs["__new__"] = _dict_like_new
            return _PlaceholderType(f"PickledObject[{name}]", (PickledObject,), attrs)
        if kind == "list":
            return _PlaceholderType(f"PickledObject[{name}]", (PickledList,), attrs)
        if name == "builtins.getattr":
            # protocol 2 pickles ``Outer.attr`` (a method, a nested class) as getattr(Outer, "attr"):
            # answer with the placeholder for the dotted name rather than calling getattr
            placeholders = self

            def __new__(cls, *args):
                if (len(args) == 2 and isinstance(args[0], _PlaceholderType) and isinstance(args[1], str)
                        and len(placeholders.classes) < 4 * MAX_PLACEHOLDERS):
                    return placeholders.get(f"{args[0].placeholder_name}.{args[1]}")
                return PickledObject.__new__(cls, *args)
            attrs["__new__"] = __new__
        return _PlaceholderType(f"PickledObject[{name}]", (PickledObject,), attrs)

    def signature(self):
        return frozenset((name, cls.kind) for name, cls in self.classes.items())

    def allowlist(self):
        return [(cls, name) for name, cls in self.classes.items()]

    def named_in(self, message):
        """The placeholder class whose repr appears in ``message``, if any."""
        for cls in self.classes.values():
            if repr(cls) in message:
                return cls
        return None


def placeholder_name(obj):
    """The dotted name a placeholder stands for (also for dict-like ones), else None."""
    if isinstance(obj, (PickledObject, _PlaceholderType)):
        return obj.placeholder_name if isinstance(obj, _PlaceholderType) else obj.name
    if type(obj) is OrderedDict:
        return obj.__dict__.get(_PH_NAME)
    return None


# ----------------------------------------------------------------- pickles


def _torch_load(path, trust_pickle, allow):
    loader = dict(weights_only=not trust_pickle)
    with torch.serialization.safe_globals(SAFE_GLOBALS + allow):
        try:
            return torch.load(path, map_location="cpu", mmap=True, **loader)
        except RuntimeError as e:
            if "mmap" not in str(e):  # legacy (non-zip) files cannot be memory-mapped
                raise
            return torch.load(path, map_location="cpu", **loader)


def _unknown_globals(path):
    """The globals torch would refuse, read from the pickle without running it (zip checkpoints
    only; anything else: empty, the retry loop finds them one by one)."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        return []


def _blocked(name):
    from torch import _weights_only_unpickler
    return name.split(".")[0] in getattr(_weights_only_unpickler, "_blocklisted_modules", ())


def _unreadable(path, error, placeholders=None):
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
    if isinstance(error, pickle.UnpicklingError) or detail:
        first = detail.group(1) if detail else (str(error).splitlines() or [""])[0]
    else:
        first = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
    what = ("holds Python objects that could not be read without executing them"
            if placeholders and placeholders.classes and not _looks_corrupt(error)
            else "not a readable PyTorch checkpoint (truncated, corrupt or not a checkpoint)")
    return ConversionError(f"{path}: {what}{': ' + first if first else ''}")


def _looks_corrupt(error):
    return isinstance(error, (EOFError, struct.error)) or any(
        s in str(error) for s in ("Unsupported operand", "invalid load key", "zip archive", "central directory"))


def _load_object(path, trust_pickle):
    """The unpickled object of a ``torch.save`` file; without ``trust_pickle`` unknown globals
    are placeholders and nothing from the file is executed."""
    if trust_pickle:
        try:
            return _torch_load(path, True, [])
        except Exception as e:
            raise _unreadable(path, e) from None
    placeholders = _Placeholders()
    for name in _unknown_globals(path):
        if not _blocked(name):
            placeholders.get(name)
    tried = set()
    while True:
        if len(placeholders.classes) > MAX_PLACEHOLDERS:
            raise ConversionError(
                f"{path}: holds more than {MAX_PLACEHOLDERS} kinds of Python objects besides tensors "
                f"({', '.join(sorted(placeholders.classes)[:8])}, ...); refusing to read it without "
                "--trust-pickle. Nothing was executed.")
        tried.add(placeholders.signature())
        try:
            return _torch_load(path, False, placeholders.allowlist())
        except pickle.UnpicklingError as e:
            error, message = e, str(e)
        except Exception as e:  # anything else the unpickler trips over: not a checkpoint we can read
            raise _unreadable(path, e, placeholders) from None
        blocked = re.search(r"GLOBAL (\S+) whose module (\S+) is blocked", message)
        unknown = re.search(r"GLOBAL (\S+) was not an allowed global", message)
        culprit = placeholders.named_in(message)
        if blocked:
            raise ConversionError(
                f"{path}: refusing to unpickle {blocked.group(1)}: the checkpoint asks for a function of "
                f"the '{blocked.group(2)}' module, which no checkpoint needs and which can run any "
                "command. Nothing was executed. Do not pass --trust-pickle unless you trust the file "
                "completely: it would run this.") from None
        if unknown:
            # torch's message drops a leading "builtins." (GLOBAL builtins.eval reads "GLOBAL eval")
            # (a dotted name shown for the second time was one of those)
            shown = unknown.group(1)
            name = shown if "." in shown and shown not in placeholders.classes else f"builtins.{shown}"
            if name not in placeholders.classes:
                placeholders.get(name)
        elif culprit is not None and re.search(r"Can only SETITEMS? for dict", message):
            placeholders.get(culprit.placeholder_name, "dict")
        elif culprit is not None and "Can only append to lists" in message:
            placeholders.get(culprit.placeholder_name, "list")
        elif culprit is None and not re.search(r"<unpickled placeholder", message):
            raise _unreadable(path, error, placeholders) from None
        # else: a placeholder created during the last try (getattr) that is not allowlisted yet
        if placeholders.signature() in tried:  # no progress: a construct placeholders cannot stand in for
            offender = re.search(r"WeightsUnpickler error:\s*(.+)", message)
            offender = offender.group(1) if offender else (message.splitlines() or [""])[-1]
            raise ConversionError(
                f"{path}: holds Python objects besides tensors that cannot be read without executing "
                f"code from the file ({offender.strip()}). Nothing was executed. If you trust the file's "
                "source, pass --trust-pickle (convert(..., trust_pickle=True)).") from None


def load_pickle(path, trust_pickle=False):
    """The state dict in a ``torch.save`` file, read without executing any pickled object
    unless ``trust_pickle``. Training checkpoints are unwrapped (``state_dict``/``model``/
    ``module``); their other entries are dropped (``load_pickle_with_metadata`` returns them)."""
    return load_pickle_with_metadata(path, trust_pickle)[0]


class CheckpointExtras(dict):
    """The top-level entries of a training checkpoint besides the weights, as plain Python
    (see ``to_plain``). ``weights_key``: the entry the state dict came from (None: the file is
    the state dict); ``discarded``: the other top-level keys (this dict's keys);
    ``placeholders``: the dotted names of the objects read as placeholders, sorted."""

    weights_key = None
    discarded = ()
    placeholders = ()


def load_pickle_with_metadata(path, trust_pickle=False):
    """``(state_dict, extras)`` of a ``torch.save`` file: the tensors as ``load_pickle`` returns
    them, and a ``CheckpointExtras`` dict of the checkpoint's other top-level entries, e.g.
    ``extras["meta"]["config"]`` (mmcv's config text) or ``extras["config"]["MODEL"]`` (yacs).
    Without ``trust_pickle`` nothing from the file is executed."""
    path = str(path)
    obj = _load_object(path, trust_pickle)
    state_dict, key = _state_dict_of(obj, path, trust_pickle)
    extras = CheckpointExtras()
    if key is not None:
        for k, v in obj.items():
            if k != key:
                extras[k] = to_plain(v)
    extras.weights_key = key
    extras.discarded = tuple(extras)
    extras.placeholders = tuple(sorted(_placeholder_names(obj)))
    return state_dict, extras


# ----------------------------------------------------------------- plain Python


_NUMPY_FORMATS = {"b1": "?", "i1": "b", "u1": "B", "i2": "h", "u2": "H", "i4": "i", "u4": "I",
                  "i8": "q", "u8": "Q", "f2": "e", "f4": "f", "f8": "d"}


def _numpy_format(dtype):
    """struct format of a placeholder ``numpy.dtype`` (numbers and bools only), else None."""
    if placeholder_name(dtype) != "numpy.dtype" or not isinstance(dtype, PickledObject):
        return None
    code = dtype.args[0] if dtype.args and isinstance(dtype.args[0], str) else None
    fmt = _NUMPY_FORMATS.get(code)
    state = dtype.state
    order = state[1] if isinstance(state, tuple) and len(state) > 1 and isinstance(state[1], str) else "<"
    if fmt is None or order not in "<>|=":
        return None
    return {"<": "<", ">": ">", "|": "<", "=": "="}[order] + fmt


def _numpy_value(obj):
    """A numpy scalar or simple numeric array placeholder as Python numbers (lists), decoded
    from its bytes without numpy; None if it is something else."""
    name = placeholder_name(obj)
    if not isinstance(obj, PickledObject) or name is None:
        return None
    try:
        if name.endswith("multiarray.scalar") and len(obj.args) == 2 and isinstance(obj.args[1], bytes):
            fmt = _numpy_format(obj.args[0])
            if fmt is not None:
                value = struct.unpack(fmt, obj.args[1])[0]
                return value
        if name.endswith("multiarray._reconstruct") and isinstance(obj.state, tuple) and len(obj.state) == 5:
            _, shape, dtype, fortran, raw = obj.state
            fmt = _numpy_format(dtype)
            if fmt is None or fortran or not isinstance(raw, bytes) or not isinstance(shape, tuple):
                return None
            count = 1
            for n in shape:
                count *= n
            flat = list(struct.unpack(fmt[0] + fmt[1:] * count, raw))
            for n in reversed(shape[1:]):
                flat = [flat[i:i + n] for i in range(0, len(flat), n)]
            return flat if shape else flat[0]
    except (struct.error, TypeError, ValueError):
        return None
    return None


def to_plain(obj, _memo=None):
    """``obj`` with placeholders turned into plain Python: dict-like ones into dicts, list-like
    ones into lists, numpy scalars/numeric arrays into numbers/lists, any other into
    ``{"__placeholder__": name, "args": ..., "state": ...}`` (a bare class or function:
    ``{"__placeholder__": name}``), recursively. Tensors and other values are kept."""
    memo = {} if _memo is None else _memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, _PlaceholderType):
        return {"__placeholder__": obj.placeholder_name}
    if isinstance(obj, Mapping):
        out = memo[id(obj)] = {}
        for k, v in obj.items():
            key = to_plain(k, memo)
            try:
                hash(key)
            except TypeError:
                key = repr(k)
            out[key] = to_plain(v, memo)
        return out
    if isinstance(obj, list):
        out = memo[id(obj)] = []
        out.extend(to_plain(v, memo) for v in obj)
        return out
    if isinstance(obj, tuple):
        return tuple(to_plain(v, memo) for v in obj)
    if isinstance(obj, (set, frozenset)):
        items = [to_plain(v, memo) for v in obj]
        try:
            return type(obj)(items)
        except TypeError:
            return items
    if isinstance(obj, PickledObject):
        value = _numpy_value(obj)
        if value is not None:
            return value
        out = memo[id(obj)] = {"__placeholder__": obj.name}
        out["args"] = to_plain(obj.args, memo)
        out["state"] = to_plain(obj.state, memo)
        return out
    return obj


def _walk(obj, seen=None):
    """Every object reachable through containers and placeholders (args, state), once."""
    seen = set() if seen is None else seen
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        yield o
        if isinstance(o, Mapping):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        if isinstance(o, PickledObject):
            stack.extend((o.args, o.state))


def _placeholder_names(obj):
    return {n for o in _walk(obj) if (n := placeholder_name(o)) is not None}


def _holds_tensors(obj):
    return any(isinstance(o, torch.Tensor) for o in _walk(obj))


def _describe(value):
    name = placeholder_name(value)
    if isinstance(value, _PlaceholderType):
        return f"a reference to {name}"
    if name is not None:
        return f"a pickled {name}" + (" (a dict)" if isinstance(value, Mapping) else "")
    return type(value).__name__


_TRUST_HINT = ("its weights are inside a pickled Python object; --trust-pickle (convert(..., "
               "trust_pickle=True)) rebuilds such objects (a torch.nn.Module's state_dict() is then "
               "used) but executes code from the file: use it only if you trust the file's source")


def _state_dict_of(obj, path, trust_pickle=False):
    """(state dict, the top-level key it was under or None)."""
    weights, key = obj, None
    if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for wrapper in ("state_dict", "model", "module"):  # training checkpoints wrap the weights
            inner = obj.get(wrapper)
            if trust_pickle and isinstance(inner, torch.nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, Mapping):
                weights, key = inner, wrapper
                break
    if trust_pickle and key is None and isinstance(weights, torch.nn.Module):
        weights = weights.state_dict()
    if not isinstance(weights, Mapping):
        hint = f"; {_TRUST_HINT}" if not trust_pickle and _holds_tensors(weights) else ""
        raise ConversionError(f"{path}: holds {_describe(weights)}, not a state dict of tensors{hint}")
    bad = [k for k, v in weights.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        where = f" (in '{key}')" if key is not None else ""
        listed = ", ".join(f"{k!r} ({_describe(weights[k])})" for k in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        hint = ""
        if not trust_pickle and any(placeholder_name(weights[k]) is not None and _holds_tensors(weights[k])
                                    for k in bad):
            hint = f"; {_TRUST_HINT}"
        raise ConversionError(f"{path}: entries that are not tensors{where}: {listed}{more}{hint}")
    return dict(weights), key


def load_safetensors(path):
    """The tensors of a safetensors file, memory-mapped (copy-on-write; read when used), each with
    its own storage (see ``safetensors_io.load_mapped``)."""
    from .safetensors_io import load_mapped

    try:
        return load_mapped(path)
    except (OSError, ValueError) as e:
        raise ConversionError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None


def load_file(path, trust_pickle=False):
    path = str(path)
    if path.endswith(".safetensors"):
        return load_safetensors(path)
    return load_pickle(path, trust_pickle)


def load_hf_folder(folder, trust_pickle=False):
    """(config dict, state dict) of a Hugging Face model folder."""
    folder = str(folder)
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise ConversionError(f"{folder}: not a model folder (no config.json; files: {sorted(os.listdir(folder))[:10]})")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ConversionError(f"{config_path}: not valid JSON: {e}") from None
    for name in HF_WEIGHT_FILES:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        if not name.endswith(".index.json"):
            return config, load_file(path, trust_pickle)
        try:
            with open(path, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError) as e:
            raise ConversionError(f"{path}: not a valid shard index: {e}") from None
        state_dict = {}
        for shard in shards:
            state_dict.update(load_file(os.path.join(folder, shard), trust_pickle))
        return config, state_dict
    raise ConversionError(f"{folder}: config.json but no weights (looked for {', '.join(HF_WEIGHT_FILES)})")


def load_source(src, trust_pickle=False):
    """(state dict, config dict or None) of a checkpoint file or a Hugging Face folder."""
    src = str(src)
    if os.path.isdir(src):
        return load_hf_folder(src, trust_pickle)[::-1]
    if not os.path.isfile(src):
        raise ConversionError(f"{src}: no such file or folder")
    return load_file(src, trust_pickle), None
