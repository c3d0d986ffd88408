"""``rwkv_hf.publish`` / ``rwkv-hf publish`` against the local test Hub (tests/hub_server.py), fully offline.

Other test modules may set HF_HUB_OFFLINE=1 for the whole session: the ``hub`` fixture switches the
huggingface_hub constant off for one test, and the download check runs in a subprocess with its own env.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import huggingface_hub
import rwkv_hf
from rwkv_hf.cli import main as cli_main
from rwkv_hf.publish import PublishError, check_model_folder, publish

from hub_server import NO_RWKV_HF

REPO = "test-user/tiny-rwkv7"
INPUT_IDS = [[1, 5, 9, 2, 63, 17, 4, 8]]


@pytest.fixture
def no_saved_token(tmp_path, monkeypatch):
    """No HF_TOKEN and no saved login: huggingface_hub.get_token() returns None."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "empty_hf_home" / "token"))
    assert huggingface_hub.get_token() is None


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny RWKV-7 folder (+ model card, + junk that must not be uploaded) and its logits on INPUT_IDS."""
    folder = tmp_path_factory.mktemp("tiny") / "model"
    config = rwkv_hf.lm.RWKV_LM_CONFIGS[7](vocab_size=64, hidden_size=32, num_hidden_layers=2, head_size=16,
                                           intermediate_size=64)
    torch.manual_seed(0)
    model = rwkv_hf.lm.RWKV_LM_CLASSES[7][2](config).eval()
    model.save_pretrained(folder)
    (folder / "README.md").write_text("---\nlibrary_name: rwkv_hf\n---\n# tiny\n")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    (folder / "model.safetensors.partial").write_bytes(b"half a file")
    with torch.no_grad():
        logits = model(torch.tensor(INPUT_IDS)).logits
    return folder, logits


def _tree(root):
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _published_files(folder):
    return {k: v for k, v in _tree(folder).items() if "__pycache__" not in k and not k.endswith(".partial")}


LOAD_SCRIPT = """
import sys, torch
import rwkv_hf
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    torch.save(model(torch.tensor(%r)).logits, sys.argv[2])
print(type(model).__name__)
""" % (INPUT_IDS,)


# The same, where rwkv_hf cannot be imported: the published remote code (trust_remote_code=True).
REMOTE_SCRIPT = NO_RWKV_HF + """
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
with torch.no_grad():
    torch.save(model(torch.tensor(%r)).logits, sys.argv[2])
print(type(model).__module__.split(".")[0], any(m.startswith("rwkv_hf") for m in sys.modules))
""" % (INPUT_IDS,)


def test_publish_then_from_pretrained(hub, model_dir, tmp_path, capsys):
    folder, logits = model_dir
    url = publish(folder, REPO, token=hub.token, endpoint=hub.url, commit_message="first")
    assert url == f"{hub.url}/{REPO}"
    stored = _tree(hub.repo_dir(REPO))
    assert stored == _published_files(folder)
    assert {"config.json", "model.safetensors", "README.md"} <= set(stored)
    sha = huggingface_hub.HfApi(endpoint=hub.url).model_info(REPO).sha
    assert f"published {folder} to {url} (commit {sha})" in capsys.readouterr().out

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    out = tmp_path / "logits.pt"
    result = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, REPO, str(out)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "RwkvV7ForCausalLM"
    torch.testing.assert_close(torch.load(out), logits, rtol=0, atol=0)
    assert ("GET", f"/{REPO}/resolve/{sha}/model.safetensors") in hub.requests

    env["HF_HOME"] = str(tmp_path / "hf_home_remote")
    result = subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, REPO, str(out)], env=env, capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["transformers_modules", "False"]
    torch.testing.assert_close(torch.load(out), logits, rtol=0, atol=0)


PUSH_SCRIPT = """
import rwkv_hf
from rwkv_hf.vision import VRWKV_CLASSES, VrwkvConfig
config = VrwkvConfig(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_labels=3)
VRWKV_CLASSES[4][2](config).push_to_hub("test-user/tiny-vrwkv")
"""


def test_push_to_hub_of_a_vision_model_uploads_a_hub_ready_folder(hub, tmp_path):
    # huggingface_hub reads HF_ENDPOINT at import: a subprocess, as a user's script would run
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN=hub.token, HF_HOME=str(tmp_path / "hf_home"))
    result = subprocess.run([sys.executable, "-c", PUSH_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    stored = _tree(hub.repo_dir("test-user/tiny-vrwkv"))
    assert {"config.json", "model.safetensors", "README.md", "preprocessor_config.json", "modeling_vrwkv.py",
            "configuration_vrwkv.py", "image_processing_vrwkv.py", "wkv_ops.py"} <= set(stored)
    config = json.loads(stored["config.json"])
    assert config["auto_map"]["AutoModelForImageClassification"] == "modeling_vrwkv.VrwkvForImageClassification"
    card = stored["README.md"].decode()
    assert "pipeline_tag: image-classification" in card and "test-user/tiny-vrwkv" in card


def test_cli_publish(hub, model_dir, monkeypatch, capsys):
    folder, _ = model_dir
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)  # what HF_ENDPOINT would have set
    assert cli_main(["publish", str(folder), REPO, "--private", "-m", "via cli", "--token", hub.token]) == 0
    out, err = capsys.readouterr()
    assert f"published {folder} to {hub.url}/{REPO} (commit " in out and err == ""
    assert _tree(hub.repo_dir(REPO)) == _published_files(folder)
    assert huggingface_hub.HfApi(endpoint=hub.url, token=hub.token).model_info(REPO).private


def _model_without(tmp_path, model_dir, *names):
    folder = tmp_path / "copy"
    folder.mkdir()
    for name, data in _tree(model_dir[0]).items():
        if name not in names and "/" not in name:
            (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("case, message", [
    ("no_config", "config.json is missing"),
    ("bad_json", "not a valid config"),
    ("unknown_type", "model_type 'bert' is not an rwkv_hf model"),
    ("no_weights", "model.safetensors (or model.safetensors.index.json) is missing"),
    ("truncated", "not a complete safetensors file"),
    ("missing_shard", "weights shard model-00002-of-00002.safetensors is missing"),
    ("no_folder", "no such folder"),
])
def test_bad_folder_fails_before_any_request(hub, model_dir, tmp_path, capsys, case, message):
    folder = _model_without(tmp_path, model_dir)
    config = folder / "config.json"
    if case == "no_config":
        config.unlink()
    elif case == "bad_json":
        config.write_text("{not json")
    elif case == "unknown_type":
        config.write_text(json.dumps({**json.loads(config.read_text()), "model_type": "bert"}))
    elif case == "no_weights":
        (folder / "model.safetensors").unlink()
    elif case == "truncated":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[:-10])
    elif case == "missing_shard":
        (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
        shards = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": shards}))
    elif case == "no_folder":
        folder = tmp_path / "nowhere"
    with pytest.raises(PublishError, match=message.replace("(", r"\(").replace(")", r"\)")):
        publish(folder, REPO, token=hub.token, endpoint=hub.url)
    assert cli_main(["publish", str(folder), REPO, "--token", hub.token]) == 1
    out, err = capsys.readouterr()
    assert "published" not in out and err.startswith("rwkv-hf publish: error: ") and err.count("\n") == 1
    assert hub.requests == []


def test_missing_readme_warns(model_dir, tmp_path):
    folder = _model_without(tmp_path, model_dir, "README.md")
    with pytest.warns(UserWarning, match="no README.md"):
        assert check_model_folder(folder)[0] == "rwkv_hf_v7"


def test_missing_token(hub, model_dir, no_saved_token, capsys):
    with pytest.raises(PublishError, match="no Hugging Face token: pass --token, set HF_TOKEN or run `hf auth login`"):
        publish(model_dir[0], REPO, endpoint=hub.url)
    assert hub.requests == []


def test_token_from_env(hub, model_dir, no_saved_token, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", hub.token)
    publish(model_dir[0], REPO, endpoint=hub.url, verbose=False)
    assert _tree(hub.repo_dir(REPO)) == _published_files(model_dir[0])


def test_wrong_token(hub, model_dir, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
    assert cli_main(["publish", str(model_dir[0]), REPO, "--token", "hf_wrong"]) == 1
    out, err = capsys.readouterr()
    assert "published" not in out and "401" in err and "invalid or expired token" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not hub.repo_dir(REPO).exists()


def test_refused_commit_publishes_nothing(hub, model_dir, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
    hub.refuse_commits = True
    assert cli_main(["publish", str(model_dir[0]), REPO, "--token", hub.token]) == 1
    out, err = capsys.readouterr()
    assert "published " not in out and "403" in err and "nothing was published" in err
    assert err.count("\n") == 1
    assert _tree(hub.repo_dir(REPO)) == {}
    with pytest.raises(PublishError, match="refused to commit"):
        publish(model_dir[0], REPO, token=hub.token, endpoint=hub.url, verbose=False)


def test_offline_mode_and_bad_repo_id_fail_before_any_request(hub, model_dir, monkeypatch):
    with pytest.raises(PublishError, match="invalid repo id"):
        publish(model_dir[0], "not a repo id!", token=hub.token, endpoint=hub.url)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PublishError, match="HF_HUB_OFFLINE is set"):
        publish(model_dir[0], REPO, token=hub.token, endpoint=hub.url)
    assert hub.requests == []
