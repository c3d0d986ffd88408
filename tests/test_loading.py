"""Safe loading of training checkpoints (rwkv_hf.conversion.loading): Python objects next to the
weights (mmcv meta, yacs CfgNode, numpy scalars, argparse.Namespace, optimizer state) are read
as inert placeholders, never imported or executed; payloads that would run code stay unrun."""
import argparse
import importlib
import os
import sys
import textwrap

import numpy as np
import pytest
import torch

from rwkv_hf.conversion.loading import (MAX_PLACEHOLDERS, ConversionError, load_pickle,
                                        load_pickle_with_metadata)

FAKE_MODULES = {
    # like yacs.config.CfgNode: a dict subclass with flags in its instance __dict__
    "fakeyacs/__init__.py": "",
    "fakeyacs/config.py": """
        class CfgNode(dict):
            IMMUTABLE = "__immutable__"
            NEW_ALLOWED = "__new_allowed__"

            def __init__(self, init_dict=None, new_allowed=False):
                init_dict = {} if init_dict is None else init_dict
                for k, v in init_dict.items():
                    if type(v) is dict:
                        init_dict[k] = CfgNode(v, new_allowed=new_allowed)
                super().__init__(init_dict)
                self.__dict__[CfgNode.IMMUTABLE] = False
                self.__dict__["__deprecated_keys__"] = set()
                self.__dict__["__renamed_keys__"] = {}
                self.__dict__[CfgNode.NEW_ALLOWED] = new_allowed

            def __getattr__(self, name):
                if name in self:
                    return self[name]
                raise AttributeError(name)
    """,
    # like addict.Dict / mmcv.ConfigDict: a dict subclass pickling itself as its own state
    "fakemmcv/__init__.py": "",
    "fakemmcv/config.py": """
        class ConfigDict(dict):
            def __getattr__(self, name):
                if name in self:
                    return self[name]
                raise AttributeError(name)

            def __getstate__(self):
                return self

            def __setstate__(self, state):
                self.update(state)
    """,
    # objects whose unpickling would write a marker file
    "fakeevil/__init__.py": "",
    "fakeevil/payload.py": """
        import pathlib

        def write_marker(path):
            pathlib.Path(path).write_text("executed")

        class ReducePayload:
            def __init__(self, path):
                self.path = path

            def __reduce__(self):
                return (write_marker, (self.path,))

        class SetstatePayload:
            def __init__(self, path):
                self.path = path

            def __getstate__(self):
                return {"path": self.path}

            def __setstate__(self, state):
                write_marker(state["path"])

        class History(list):
            def __init__(self, items=(), path=None):
                super().__init__(items)
                self.path = path

            def __setstate__(self, state):
                write_marker(state["path"])
    """,
}


@pytest.fixture
def fake_modules(tmp_path):
    """Import fake third-party modules from a temp dir; on exit (and before the checkpoint is
    loaded, via ``forget``) remove them from sys.path and sys.modules."""
    root = tmp_path / "site"
    for rel, text in FAKE_MODULES.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text))
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()

    def forget():
        if str(root) in sys.path:
            sys.path.remove(str(root))
        for name in list(sys.modules):
            if name.split(".")[0] in ("fakeyacs", "fakemmcv", "fakeevil"):
                del sys.modules[name]
        importlib.invalidate_caches()
        for name in ("fakeyacs.config", "fakemmcv.config", "fakeevil.payload"):
            with pytest.raises(ImportError):
                importlib.import_module(name)

    yield importlib.import_module, forget
    forget()


def _weights():
    g = torch.Generator().manual_seed(0)
    return {"backbone.patch_embed.weight": torch.randn(8, 3, 4, 4, generator=g),
            "backbone.layers.0.ln1.weight": torch.randn(8, generator=g),
            "head.fc.bias": torch.zeros(5, dtype=torch.float16)}


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_training_checkpoint_objects_are_read_without_importing_or_running_anything(tmp_path, fake_modules, zipfile):
    import_module, forget = fake_modules
    yacs = import_module("fakeyacs.config")
    mmcv = import_module("fakemmcv.config")
    evil = import_module("fakeevil.payload")
    markers = [tmp_path / f"executed{i}" for i in range(3)]

    cfg = yacs.CfgNode({"MODEL": {"TYPE": "vrwkv", "VRWKV": {"POST_NORM": True, "EMBED_DIM": 192}},
                        "DATA": {"IMG_SIZE": 224}})
    weights = _weights()
    weights["backbone.layers.0.ln1.weight"] = torch.nn.Parameter(weights["backbone.layers.0.ln1.weight"])
    checkpoint = {
        "meta": {"config": "model = dict(backbone=dict(post_norm=True))", "CLASSES": ["a"],
                 "seed": np.int64(3), "lr": np.float64(1.5), "mean": np.array([1.0, 2.5], dtype=np.float32),
                 "cfg_dict": mmcv.ConfigDict(model=mmcv.ConfigDict(type="VRWKV", depth=12))},
        "state_dict": weights,
        "optimizer": {"state": {0: {"momentum_buffer": torch.ones(3)}}, "param_groups": [{"lr": 1e-3}]},
        "config": cfg,
        "args": argparse.Namespace(lr=1e-4, epochs=300),
        "history": evil.History([1, 2], path=str(markers[2])),
        "evil": evil.ReducePayload(str(markers[0])),
        "evil_state": evil.SetstatePayload(str(markers[1])),
    }
    path = tmp_path / "ckpt.pth"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=zipfile)
    forget()  # from here on none of the classes named in the file can be imported

    allowed_before = set(torch.serialization.get_safe_globals())
    state_dict, extras = load_pickle_with_metadata(path)
    assert not any(m.exists() for m in markers)
    assert set(torch.serialization.get_safe_globals()) == allowed_before  # placeholders are not left allowlisted
    assert not any(name.split(".")[0] in ("fakeyacs", "fakemmcv", "fakeevil") for name in sys.modules)

    assert list(state_dict) == list(weights)
    for k, v in weights.items():
        assert type(state_dict[k]) in (torch.Tensor, torch.nn.Parameter) and state_dict[k].dtype == v.dtype
        assert torch.equal(state_dict[k], v), k
    assert extras.weights_key == "state_dict"
    assert set(extras.discarded) == set(checkpoint) - {"state_dict"} == set(extras)

    # yacs CfgNode -> nested plain dicts
    assert extras["config"]["MODEL"]["VRWKV"]["POST_NORM"] is True
    assert extras["config"]["MODEL"]["VRWKV"]["EMBED_DIM"] == 192 and extras["config"]["DATA"] == {"IMG_SIZE": 224}
    assert type(extras["config"]) is dict and type(extras["config"]["MODEL"]) is dict
    # mmcv meta: the config text, lists, numpy scalars and arrays decoded without numpy
    meta = extras["meta"]
    assert meta["config"] == "model = dict(backbone=dict(post_norm=True))" and meta["CLASSES"] == ["a"]
    assert meta["seed"] == 3 and type(meta["seed"]) is int
    assert meta["lr"] == 1.5 and type(meta["lr"]) is float
    assert meta["mean"] == [1.0, 2.5]
    assert meta["cfg_dict"] == {"model": {"type": "VRWKV", "depth": 12}}
    # the optimizer state keeps its tensors and numbers
    assert torch.equal(extras["optimizer"]["state"][0]["momentum_buffer"], torch.ones(3))
    assert extras["optimizer"]["param_groups"] == [{"lr": 1e-3}]
    # other objects: name, constructor args and state, nothing run
    assert extras["args"] == {"__placeholder__": "argparse.Namespace", "args": (),
                              "state": {"lr": 1e-4, "epochs": 300}}
    assert extras["history"] == [1, 2]
    assert extras["evil"] == {"__placeholder__": "fakeevil.payload.write_marker",
                              "args": (str(markers[0]),), "state": None}
    assert extras["evil_state"]["__placeholder__"] == "fakeevil.payload.SetstatePayload"
    assert extras["evil_state"]["state"] == {"path": str(markers[1])}
    assert {"fakeyacs.config.CfgNode", "fakemmcv.config.ConfigDict", "argparse.Namespace",
            "fakeevil.payload.write_marker"} <= set(extras.placeholders)

    # load_pickle: the same tensors; --trust-pickle would need the (absent) modules
    plain = load_pickle(path)
    assert list(plain) == list(weights) and all(torch.equal(plain[k], v) for k, v in weights.items())
    with pytest.raises(ConversionError):
        load_pickle(path, trust_pickle=True)
    assert not any(m.exists() for m in markers)


def test_placeholders_have_readable_reprs(tmp_path):
    torch.save({"state_dict": _weights(), "args": argparse.Namespace(lr=1e-4)}, tmp_path / "a.pth")
    from rwkv_hf.conversion import loading

    obj = loading._load_object(str(tmp_path / "a.pth"), False)
    assert repr(obj["args"]) == "<unpickled placeholder for argparse.Namespace>"
    assert obj["args"].name == "argparse.Namespace" and obj["args"].state == {"lr": 1e-4}


class _SystemPayload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class _EvalPayload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (eval, (f"__import__('pathlib').Path({self.path!r}).touch()",))


class _ExecPayload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import subprocess
        return (subprocess.call, (["touch", self.path],))


class _BuiltinExecPayload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').close()",))


class _BoundMethodPayload:
    """Path(marker).touch(): the callable is itself rebuilt, getattr(PosixPath(marker), "touch")."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib
        return (pathlib.Path(self.path).touch, ())


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload, error", [
    (_SystemPayload, r"refusing to unpickle (posix|nt|os)\.system.*Nothing was executed"),
    (_BoundMethodPayload, r"cannot be read without executing code from the file.*Nothing was executed"),
])
def test_payloads_placeholders_cannot_stand_for_are_refused_and_never_run(tmp_path, payload, error, zipfile):
    marker = tmp_path / "executed"
    torch.save({"state_dict": _weights(), "x": payload(str(marker))}, tmp_path / "bad.pth",
               _use_new_zipfile_serialization=zipfile)
    for loader in (load_pickle, load_pickle_with_metadata):
        with pytest.raises(ConversionError, match=r"bad\.pth: .*" + error):
            loader(tmp_path / "bad.pth")
    assert not marker.exists()


# protocol 2 writes subprocess.call under its Python 2 name, commands.call (torch does not map it back)
@pytest.mark.parametrize("payload, name", [(_EvalPayload, "builtins.eval"), (_ExecPayload, "commands.call"),
                                           (_BuiltinExecPayload, "builtins.exec")])
def test_code_running_payloads_become_placeholders_and_never_run(tmp_path, payload, name):
    marker = tmp_path / "executed"
    torch.save({"state_dict": _weights(), "x": payload(str(marker)), "y": [payload(str(marker))]},
               tmp_path / "p.pth")
    state_dict, extras = load_pickle_with_metadata(tmp_path / "p.pth")
    assert not marker.exists()
    assert list(state_dict) == list(_weights())
    assert extras["x"]["__placeholder__"] == name and extras["x"]["state"] is None
    assert extras["y"][0]["__placeholder__"] == name
    assert name in extras.placeholders
    # a payload standing where the weights should be: refused, named, still not run
    torch.save({"w": torch.ones(2), "hook": payload(str(marker))}, tmp_path / "q.pth")
    with pytest.raises(ConversionError, match=rf"entries that are not tensors: 'hook' \(a pickled {name}\)"):
        load_pickle(tmp_path / "q.pth")
    assert not marker.exists()


def test_a_pickled_module_is_refused_with_the_trust_hint_and_read_when_trusted(tmp_path):
    model = torch.nn.Linear(3, 2)
    torch.save(model, tmp_path / "whole.pth")
    with pytest.raises(ConversionError, match=r"holds a pickled torch\.nn\.modules\.linear\.Linear.*--trust-pickle"):
        load_pickle(tmp_path / "whole.pth")
    torch.save({"model": model, "epoch": 3}, tmp_path / "wrapped.pth")
    with pytest.raises(ConversionError, match=r"'model' \(a pickled torch\.nn\.modules\.linear\.Linear\).*--trust-pickle"):
        load_pickle(tmp_path / "wrapped.pth")
    for f in ("whole.pth", "wrapped.pth"):
        sd = load_pickle(tmp_path / f, trust_pickle=True)
        assert sorted(sd) == ["bias", "weight"] and torch.equal(sd["weight"], model.weight)
    # stray plain values (no wrapper): named, no trust hint (trusting would not help)
    torch.save({"w": torch.ones(2), "step": 7}, tmp_path / "stray.pth")
    with pytest.raises(ConversionError, match=r"entries that are not tensors: 'step' \(int\)$"):
        load_pickle(tmp_path / "stray.pth")


def test_plain_state_dicts_have_no_extras(tmp_path):
    torch.save(_weights(), tmp_path / "sd.pth")
    state_dict, extras = load_pickle_with_metadata(tmp_path / "sd.pth")
    assert list(state_dict) == list(_weights()) and extras == {} and extras.weights_key is None
    assert extras.discarded == () and extras.placeholders == ()


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_too_many_kinds_of_objects_are_refused(tmp_path, zipfile):
    import types

    mod = types.ModuleType("fakemany")
    classes = []
    for i in range(MAX_PLACEHOLDERS + 2):
        cls = type(f"C{i}", (), {"__module__": "fakemany"})
        setattr(mod, cls.__name__, cls)
        classes.append(cls)
    sys.modules["fakemany"] = mod
    try:
        torch.save({"state_dict": _weights(), "objs": [c() for c in classes]}, tmp_path / "many.pth",
                   _use_new_zipfile_serialization=zipfile)
    finally:
        del sys.modules["fakemany"]
    with pytest.raises(ConversionError, match=rf"more than {MAX_PLACEHOLDERS} kinds of Python objects"):
        load_pickle(tmp_path / "many.pth")
