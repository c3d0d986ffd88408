"""Saved folders carry flat remote code: they load with trust_remote_code=True where rwkv_hf
cannot be imported (checked in a subprocess that blocks every rwkv_hf import) and give the
same outputs; with rwkv_hf installed the registered classes are used without remote code."""
import json
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoImageProcessor, AutoModelForCausalLM, AutoModelForImageClassification  # noqa: E402

import rwkv_hf  # noqa: E402,F401
from rwkv_hf.lm import RWKV_LM_CLASSES  # noqa: E402
from rwkv_hf.restore import RestoreRwkvConfig, RestoreRwkvForImageRestoration  # noqa: E402
from rwkv_hf.remote_code import flatten_source  # noqa: E402
from rwkv_hf.vision import VRWKV_CLASSES, Vrwkv6Config, VrwkvConfig, VrwkvImageProcessor  # noqa: E402
from hub_server import NO_RWKV_HF  # noqa: E402
from lm_utils import tiny_model  # noqa: E402

# Runs in a fresh interpreter, outside the repository, with rwkv_hf unimportable.
LOADER = NO_RWKV_HF + textwrap.dedent("""
    import json
    import torch
    from PIL import Image
    from transformers import (AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoModelForImageClassification,
                              AutoModelForImageToImage, AutoModelForZeroShotImageClassification, AutoProcessor,
                              AutoTokenizer)
    results = {}
    for kind, folder in json.loads(sys.argv[1]):
        ref = torch.load(folder + "/ref.pt")
        if kind == "lm":
            model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
            with torch.no_grad():
                out = model(ref["input"]).logits
                # generate (the model's own recurrent cache) equals the argmax rollout of full forwards
                ids = ref["input"][:1, :4]
                gen = model.generate(ids, max_new_tokens=4, do_sample=False)
                for _ in range(4):
                    ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
                assert torch.equal(gen, ids), (folder, gen, ids)
        elif kind == "restore":
            model = AutoModelForImageToImage.from_pretrained(folder, trust_remote_code=True).eval()
            with torch.no_grad():
                out = model(ref["input"]).reconstruction
        elif kind == "point":
            model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
            with torch.no_grad():
                out = model(ref["input"]).last_hidden_state
        elif kind == "clip":
            model = AutoModelForZeroShotImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
            processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
            inputs = processor(text=["a cat", "two photos of dogs"], images=Image.fromarray(ref["image"].numpy()),
                               return_tensors="pt", padding=True)
            with torch.no_grad():
                out = model(**inputs).logits_per_image
        else:
            model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
            processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
            with torch.no_grad():
                image = Image.fromarray(ref["image"].numpy())
                out = model(**processor(image, return_tensors="pt")).logits
        err = float((out - ref["logits"]).abs().max() / ref["logits"].abs().max())
        results[folder] = [type(model).__module__, err]
    tok = AutoTokenizer.from_pretrained(sys.argv[2], trust_remote_code=True)
    results["tokenizer"] = [type(tok).__module__, tok("Hello world, \\u4f60\\u597d").input_ids]
    results["rwkv_hf imported"] = any(m.startswith("rwkv_hf") for m in sys.modules)
    # each folder's copy of the operator layer registers its kernels' torch.library operators
    # under a namespace of its own
    results["namespaces"] = sorted(m.NAMESPACE for name, m in sys.modules.items()
                                   if name.endswith(".wkv_ops_custom_ops"))
    print("RESULT " + json.dumps(results))
""")


def _image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 36, 3), dtype=np.uint8))


def _save_lm(version, folder):
    model = tiny_model(version).eval()
    model.save_pretrained(folder)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.save({"input": ids, "logits": model(ids).logits}, os.path.join(folder, "ref.pt"))
    return model


def _save_vision(version, folder):
    cls = Vrwkv6Config if version == 6 else VrwkvConfig
    extra = dict(head_size=16) if version == 6 else {}
    config = cls(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_labels=5,
                 post_norm=True, layer_scale_init_value=0.5, key_norm=True, **extra)
    model = VRWKV_CLASSES[version][2](config).eval()
    model.save_pretrained(folder)
    processor = VrwkvImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(folder)
    with torch.no_grad():
        logits = model(**processor(_image(), return_tensors="pt")).logits
    torch.save({"image": torch.from_numpy(np.array(_image())), "logits": logits}, os.path.join(folder, "ref.pt"))
    return model


def _save_restore(folder):
    config = RestoreRwkvConfig(hidden_size=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    model = RestoreRwkvForImageRestoration(config).eval()
    model.save_pretrained(folder)
    x = torch.rand(1, 1, 13, 20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.save({"input": x, "logits": model(x).reconstruction}, os.path.join(folder, "ref.pt"))
    return model


def _save_point(folder):
    from rwkv_hf.point import PointRwkvConfig, PointRwkvModel

    config = PointRwkvConfig(hidden_size=16, depths=[1, 1], num_heads=2, num_groups=[24, 12], group_sizes=[6, 6],
                             k_neighbors=[4, 4], graph_iterations=1)
    model = PointRwkvModel(config).eval()
    model.save_pretrained(folder)
    x = torch.randn(1, 50, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.save({"input": x, "logits": model(x).last_hidden_state}, os.path.join(folder, "ref.pt"))
    return model


def _save_clip(folder):
    from transformers import AutoProcessor

    from rwkv_hf.clip import RwkvClipConfig, RwkvClipModel

    config = RwkvClipConfig(
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, head_size=16),
        text_config=dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64, head_size=16))
    model = RwkvClipModel(config).eval()
    model.save_pretrained(folder)  # with its CLIPProcessor (the CLIP vocabulary)
    inputs = AutoProcessor.from_pretrained(folder)(text=["a cat", "two photos of dogs"], images=_image(),
                                                   return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
    torch.save({"image": torch.from_numpy(np.array(_image())), "logits": logits}, os.path.join(folder, "ref.pt"))
    return model


def test_saved_folders_load_as_remote_code_without_rwkv_hf(tmp_path):
    folders = []
    for version in RWKV_LM_CLASSES:
        folders.append(("lm", str(tmp_path / f"lm{version}")))
        _save_lm(version, folders[-1][1])
    for version in VRWKV_CLASSES:
        folders.append(("vision", str(tmp_path / f"vrwkv{version}")))
        _save_vision(version, folders[-1][1])
    folders.append(("restore", str(tmp_path / "restore")))
    _save_restore(folders[-1][1])
    folders.append(("clip", str(tmp_path / "clip")))
    _save_clip(folders[-1][1])
    folders.append(("point", str(tmp_path / "point")))
    _save_point(folders[-1][1])
    world = tmp_path / "world"
    tiny_model(7, vocab_size=65536).save_pretrained(world)  # writes the World tokenizer (+ its code)

    config = json.loads((tmp_path / "lm7" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_rwkv_lm.RwkvV7ForCausalLM"
    assert config["auto_map"]["AutoConfig"] == "configuration_rwkv_lm.RwkvV7Config"
    vision = json.loads((tmp_path / "vrwkv6" / "config.json").read_text())["auto_map"]
    assert vision["AutoBackbone"] == "modeling_vrwkv.Vrwkv6Backbone"
    restore = json.loads((tmp_path / "restore" / "config.json").read_text())["auto_map"]
    assert restore["AutoModelForImageToImage"] == "modeling_restore_rwkv.RestoreRwkvForImageRestoration"
    clip = json.loads((tmp_path / "clip" / "config.json").read_text())["auto_map"]
    assert clip["AutoModelForZeroShotImageClassification"] == "modeling_rwkv_clip.RwkvClipModel"
    point = json.loads((tmp_path / "point" / "config.json").read_text())["auto_map"]
    assert point["AutoModel"] == "modeling_pointrwkv.PointRwkvModel"
    assert {"modeling_rwkv_lm.py", "configuration_rwkv_lm.py", "wkv_ops.py"} <= set(os.listdir(tmp_path / "lm4"))

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    done = subprocess.run([sys.executable, "-c", LOADER, json.dumps(folders), str(world)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert results.pop("rwkv_hf imported") is False
    namespaces = results.pop("namespaces")
    assert len(namespaces) == len(set(namespaces)) == len(folders), namespaces
    assert all(n.startswith("rwkv_hf_") for n in namespaces), namespaces
    module, ids = results.pop("tokenizer")
    assert module.startswith("transformers_modules.") and ids == [33155, 40213, 45, 33, 10464, 11685]
    for folder, (module, err) in results.items():
        assert module.startswith("transformers_modules."), (folder, module)
        assert err <= 1e-5, (folder, err)


def test_with_rwkv_hf_installed_no_remote_code_is_used(tmp_path):
    _save_lm(6, tmp_path / "lm")
    _save_vision(4, tmp_path / "vision")
    # no trust_remote_code: the registered classes, no prompt, no error
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    assert type(lm) is RWKV_LM_CLASSES[6][2]
    clf = AutoModelForImageClassification.from_pretrained(tmp_path / "vision")
    assert type(clf) is VRWKV_CLASSES[4][2]
    assert type(AutoImageProcessor.from_pretrained(tmp_path / "vision")) is VrwkvImageProcessor
    # trust_remote_code=True once rwkv_hf is imported: still the registered classes
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "lm", trust_remote_code=True)) is RWKV_LM_CLASSES[6][2]
    # installed but not imported: the remote modeling file runs on rwkv_hf's operator layer
    script = textwrap.dedent("""
        import sys
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
        print("RESULT", type(model).__module__, sys.modules[type(model).__module__].ops.__name__)
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "lm")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    module, ops = done.stdout.split("RESULT ", 1)[1].split()
    assert module.startswith("transformers_modules.") and ops == "rwkv_hf.ops"


def test_flattening_refuses_imports_it_cannot_map():
    with pytest.raises(ValueError, match="cannot flatten"):
        flatten_source("from ...deep import x\n")
    text = flatten_source("from .. import ops\nfrom ..tokenization_rwkv_world import f\n")
    assert "from rwkv_hf import ops" in text and "from .wkv_ops import _module as ops" in text
    assert "from rwkv_hf.tokenization_rwkv_world import f" in text
