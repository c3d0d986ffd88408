"""The real huggingface_hub client (and transformers) against the local test Hub in tests/hub_server.py.

Fully offline: everything talks to a server on 127.0.0.1. Other test modules may set HF_HUB_OFFLINE=1 for the
whole session, so these tests pass the endpoint explicitly and switch offline mode off only inside what they
create (a monkeypatched constant for the duration of one test, or a subprocess environment).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import huggingface_hub
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError


REPO = "test-user/tiny"
BINARY = bytes(range(256)) * 8 + b"\x00\xff" * 100


@pytest.fixture
def api(hub):
    return HfApi(endpoint=hub.url, token=hub.token)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "upload"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"hidden_size": 8}))
    (root / "sub" / "deeper" / "notes.txt").write_text("nested file\n")
    (root / "weights.bin").write_bytes(BINARY)
    return root


def _tree(root):
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_create_repo_conflict_exist_ok_and_delete(hub, api):
    url = api.create_repo(REPO)
    assert url == f"{hub.url}/{REPO}" and url.repo_id == REPO
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(REPO)
    assert err.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    assert api.create_repo("tiny-ds", repo_type="dataset").repo_id == "test-user/tiny-ds"
    assert api.repo_exists(REPO) and not api.repo_exists("test-user/nope")
    assert api.model_info(REPO).sha == api.model_info(REPO, revision="main").sha
    api.delete_repo(REPO)
    assert not api.repo_exists(REPO)
    api.delete_repo(REPO, missing_ok=True)


def test_upload_folder_then_download(hub, api, folder, tmp_path):
    api.create_repo(REPO)
    info = api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="add files")
    expected = _tree(folder)
    assert _tree(hub.repo_dir(REPO)) == expected  # stored as received
    assert info.oid == api.model_info(REPO).sha
    assert sorted(s.rfilename for s in api.model_info(REPO).siblings) == sorted(expected)
    assert sorted(api.list_repo_files(REPO)) == sorted(expected)
    # Regular (non-LFS, non-Xet) upload: only the preupload and commit endpoints are used.
    assert [m for m, p in hub.requests if "/preupload/" in p or "/commit/" in p] == ["POST", "POST"]

    for name, data in expected.items():
        path = hf_hub_download(REPO, name, endpoint=hub.url, cache_dir=tmp_path / "cache", token=False)
        assert Path(path).read_bytes() == data
    snap = snapshot_download(REPO, endpoint=hub.url, cache_dir=tmp_path / "cache2", token=False)
    assert _tree(snap) == expected
    assert Path(snap).name == info.oid

    # Re-uploading identical files is a no-op: the server reports each file's git oid at preupload.
    hub.requests.clear()
    assert api.upload_folder(repo_id=REPO, folder_path=folder).oid == info.oid
    assert not [p for _, p in hub.requests if "/commit/" in p]

    # Updates and deletions in a new commit.
    (folder / "config.json").write_text("{}")
    new = api.upload_folder(repo_id=REPO, folder_path=folder, delete_patterns=["sub/**"], allow_patterns=["*.json"])
    assert new.oid != info.oid
    assert sorted(_tree(hub.repo_dir(REPO))) == ["config.json", "weights.bin"]
    assert (hub.repo_dir(REPO) / "config.json").read_text() == "{}"


def test_missing_or_wrong_token_is_refused(hub, folder):
    no_token = HfApi(endpoint=hub.url, token=False)
    with pytest.raises(HfHubHTTPError, match="Invalid username or password") as err:
        no_token.create_repo(REPO)
    assert err.value.response.status_code == 401

    HfApi(endpoint=hub.url, token=hub.token).create_repo(REPO)
    for api in (no_token, HfApi(endpoint=hub.url, token="hf_wrong")):
        with pytest.raises(HfHubHTTPError) as err:
            api.upload_folder(repo_id=REPO, folder_path=folder)
        assert err.value.response.status_code == 401
    assert _tree(hub.repo_dir(REPO)) == {}


def test_refused_commit_stores_nothing(hub, api, folder):
    api.create_repo(REPO)
    sha = api.model_info(REPO).sha
    hub.refuse_commits = True
    with pytest.raises(HfHubHTTPError, match="refuse") as err:
        api.upload_folder(repo_id=REPO, folder_path=folder)
    assert err.value.response.status_code == 403
    assert _tree(hub.repo_dir(REPO)) == {}
    assert api.model_info(REPO).sha == sha

    hub.refuse_commits = False
    api.upload_folder(repo_id=REPO, folder_path=folder)
    assert _tree(hub.repo_dir(REPO)) == _tree(folder)


def test_missing_file_repo_and_revision(hub, api, folder, tmp_path):
    api.create_repo(REPO)
    api.upload_folder(repo_id=REPO, folder_path=folder)
    kwargs = dict(endpoint=hub.url, cache_dir=tmp_path / "cache", token=False)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.txt", **kwargs)
    assert not api.file_exists(REPO, "missing.txt") and api.file_exists(REPO, "sub/deeper/notes.txt")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-user/nope", "config.json", **kwargs)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("test-user/nope", **kwargs)
    with pytest.raises(huggingface_hub.errors.RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="v9", **kwargs)


def test_private_repo_needs_token(hub, api, folder, tmp_path):
    api.create_repo(REPO, private=True)
    api.upload_folder(repo_id=REPO, folder_path=folder)
    assert api.model_info(REPO).private
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).model_info(REPO)
    path = hf_hub_download(REPO, "weights.bin", endpoint=hub.url, cache_dir=tmp_path / "c", token=hub.token)
    assert Path(path).read_bytes() == BINARY


SUBPROCESS_SCRIPT = """
import json, sys
from huggingface_hub import constants, hf_hub_download
from transformers import AutoConfig

repo = sys.argv[1]
config = AutoConfig.from_pretrained(repo)
weights = open(hf_hub_download(repo, "weights.bin"), "rb").read()
print(json.dumps({"endpoint": constants.ENDPOINT, "model_type": config.model_type,
                  "hidden_size": config.hidden_size, "weights_len": len(weights)}))
"""


def test_transformers_from_pretrained_with_hf_endpoint_env(hub, api, folder, tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(folder)
    api.create_repo(REPO)
    api.upload_folder(repo_id=REPO, folder_path=folder)

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    result = subprocess.run([sys.executable, "-c", SUBPROCESS_SCRIPT, REPO], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out == {"endpoint": hub.url, "model_type": "bert", "hidden_size": 8, "weights_len": len(BINARY)}
    # transformers 5.x first pins the revision to a commit (repo_info), then resolves files at that commit.
    sha = api.model_info(REPO).sha
    assert ("GET", f"/api/models/{REPO}") in hub.requests
    assert ("HEAD", f"/{REPO}/resolve/{sha}/config.json") in hub.requests
    assert ("GET", f"/{REPO}/resolve/main/weights.bin") in hub.requests
