"""Publish an rwkv_hf model folder to the Hugging Face Hub (``rwkv-hf publish FOLDER REPO_ID``).

The folder is checked before anything touches the network: a ``config.json`` naming one of rwkv_hf's
model types, and complete safetensors weights (``model.safetensors``, or an index whose shards are all
present). Leftovers that must not be published (the converter's ``*.partial*`` files, ``__pycache__``)
are skipped, not fatal. The token and endpoint are the explicit ones, else huggingface_hub's own
(``HF_TOKEN`` / ``hf auth login``; ``HF_ENDPOINT``).
"""
import json
import os
import struct
import warnings

# fnmatch patterns on repo paths ("*" also matches "/"); upload_folder adds .git/ and .cache/huggingface/.
IGNORE_PATTERNS = ["*.partial", "*.partial-*", "*.partial/*", "__pycache__/*", "*/__pycache__/*", "*.pyc"]


class PublishError(Exception):
    """A folder that cannot be published, or an upload the Hub refused (the message says what happened)."""


def model_types():
    """The ``model_type`` strings of every rwkv_hf config class (language, vision, restoration,
    image-text and point-cloud models)."""
    from .clip import RwkvClipConfig, RwkvClipTextConfig
    from .lm import RWKV_LM_CONFIGS
    from .point import PointRwkvConfig
    from .restore import RestoreRwkvConfig
    from .vision import VRWKV_MODEL_TYPES

    return {c.model_type for c in RWKV_LM_CONFIGS.values()} | set(VRWKV_MODEL_TYPES) | {
        RestoreRwkvConfig.model_type, RwkvClipConfig.model_type, RwkvClipTextConfig.model_type,
        PointRwkvConfig.model_type}


def _check_safetensors(path, name):
    """Header and size check: catches a missing or truncated weights file without loading it."""
    if not os.path.isfile(path):
        raise PublishError(f"{name} is missing")
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n)) if 8 + n <= size else None
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, TypeError, KeyError, AttributeError):
        header = None
    if header is None or 8 + n + end != size:
        raise PublishError(f"{name} is not a complete safetensors file ({size} bytes)")


def check_model_folder(folder):
    """Validate ``folder`` as a publishable rwkv_hf model folder; return ``(model_type, files)``, the
    repo paths that will be uploaded. Raises :class:`PublishError` naming what is missing or wrong."""
    if not os.path.isdir(folder):
        raise PublishError(f"{folder}: no such folder")
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise PublishError(f"{folder}: not a model folder: config.json is missing")
    try:
        with open(config_path, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except (ValueError, AttributeError) as e:
        raise PublishError(f"{config_path}: not a valid config ({e})") from None
    known = model_types()
    if model_type not in known:
        raise PublishError(f"{config_path}: model_type {model_type!r} is not an rwkv_hf model "
                           f"(expected one of {', '.join(sorted(known))})")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise PublishError(f"{index}: not a valid safetensors index ({e})") from None
        for shard in shards:
            _check_safetensors(os.path.join(folder, shard), f"{folder}: weights shard {shard}")
    else:
        _check_safetensors(os.path.join(folder, "model.safetensors"),
                           f"{folder}: model weights model.safetensors (or model.safetensors.index.json)")
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    paths = (os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
             for root, _, names in os.walk(folder) for name in names)  # what upload_folder will send
    files = list(filter_repo_objects(paths, ignore_patterns=IGNORE_PATTERNS + DEFAULT_IGNORE_PATTERNS))
    if "README.md" not in files:
        warnings.warn(f"{folder} has no README.md: the repo will have no model card", stacklevel=2)
    return model_type, sorted(files)


def resolve_token(token=None):
    """The explicit ``token``, else huggingface_hub's (``HF_TOKEN``, then the saved ``hf auth login``)."""
    if token:
        return token
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise PublishError("no Hugging Face token: pass --token, set HF_TOKEN or run `hf auth login`")
    return token


def publish(folder, repo_id, *, token=None, endpoint=None, private=False, commit_message=None, revision=None,
            exist_ok=True, verbose=True):
    """Upload the rwkv_hf model folder ``folder`` to the model repo ``repo_id`` and return the repo URL.

    Creates the repo (``private``; an existing one is reused when ``exist_ok``), then commits the folder
    in one commit to ``revision`` (an existing branch; default ``main``), skipping :data:`IGNORE_PATTERNS`.
    ``endpoint`` defaults to ``HF_ENDPOINT`` as huggingface_hub read it. Raises :class:`PublishError`
    before any network call for a bad folder or a missing token, and after a refused request (then
    nothing was committed). ``verbose`` prints the upload size and, once the commit returned,
    ``published <folder> to <url> (commit <sha>)``.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    folder = os.fspath(folder)
    model_type, files = check_model_folder(folder)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise PublishError(f"invalid repo id: {e}") from None
    token = resolve_token(token)
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    if constants.is_offline_mode():
        raise PublishError("HF_HUB_OFFLINE is set: unset it to publish")
    if verbose:
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in files)
        print(f"uploading {len(files)} files ({size / 1e6:.1f} MB, {model_type}) from {folder} "
              f"to {repo_id} at {endpoint}", flush=True)
    api = HfApi(endpoint=endpoint, token=token, library_name="rwkv_hf")
    step = "create the repo"
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=exist_ok)
        step = "commit"
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                 commit_message=commit_message or f"Upload {model_type} model with rwkv_hf",
                                 ignore_patterns=IGNORE_PATTERNS)
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status == 401:
            raise PublishError(f"{endpoint} refused the token (401: invalid or expired token); "
                               "nothing was published") from None
        detail = e.server_message or str(e).strip().splitlines()[0]
        raise PublishError(f"{endpoint} refused to {step} for {repo_id} ({status}: {detail}); "
                           "nothing was published") from None
    except Exception as e:  # connection errors (httpx2), ...: the commit did not return
        raise PublishError(f"could not {step} for {repo_id} at {endpoint} ({type(e).__name__}: {e}); "
                           "nothing was published") from None
    if verbose:
        print(f"published {folder} to {url} (commit {info.oid})")
    return str(url)
