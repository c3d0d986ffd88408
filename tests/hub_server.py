"""A small local Hugging Face Hub HTTP server for offline tests (stdlib only).

Point the real ``huggingface_hub`` client at it with ``HfApi(endpoint=hub.url, token=hub.token)`` or, in a
fresh process, with the ``HF_ENDPOINT`` environment variable (huggingface_hub reads it at import time).

    with LocalHub(tmp_path / "hub") as hub:
        api = HfApi(endpoint=hub.url, token=hub.token)
        api.create_repo("test-user/tiny")
        api.upload_folder(repo_id="test-user/tiny", folder_path="...")
        hub.repo_dir("test-user/tiny")  # the committed files, as received

Endpoints (``{type}`` is ``models``, ``datasets`` or ``spaces``; repo ids are ``namespace/name``):

    POST   /api/repos/create                          create a repo (409 + {"url"} if it exists)
    DELETE /api/repos/delete                          delete a repo (404 RepoNotFound if missing)
    GET    /api/whoami-v2                             the user owning the token
    POST   /api/validate-yaml                         README metadata check (always valid)
    GET    /api/{type}/{repo_id}[/revision/{rev}]     repo info: id, sha, private, siblings
    GET    /api/{type}/{repo_id}/tree/{rev}[/{path}]  file/folder listing (?recursive=true), one page
    POST   /api/{type}/{repo_id}/preupload/{rev}      upload modes: every file is "regular" (no LFS/Xet)
    POST   /api/{type}/{repo_id}/commit/{rev}         NDJSON commit: header, file (base64), deletedFile,
                                                      deletedFolder; all-or-nothing
    HEAD   /[datasets/|spaces/]{repo_id}/resolve/{rev}/{path}   file metadata: ETag, X-Repo-Commit,
    GET    /[datasets/|spaces/]{repo_id}/resolve/{rev}/{path}   Content-Length (and content for GET)

Only one branch exists: a revision is ``main`` or the current commit sha. Errors carry the ``X-Error-Code``
(``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) and ``X-Error-Message`` headers plus a JSON
``{"error": ...}`` body, which the client turns into its typed ``HfHubHTTPError`` subclasses.

Write endpoints need ``Authorization: Bearer <token>``: no token or a wrong one gets 401. A wrong token is
also refused on reads; private repos need the token to be read. ``hub.refuse_commits = True`` makes the commit
endpoint answer 403 (not 5xx: the client retries 5xx commits with backoff). Every request is recorded in
``hub.requests`` as ``(method, path)``.
"""

import base64
import hashlib
import json
import os
import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urlsplit

_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_API = r"/api/(?P<type>models|datasets|spaces)/" + _REPO


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob, which is also what huggingface_hub computes for "regular" files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    def __init__(self, status, message, code=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})
        if code:
            self.headers["X-Error-Code"] = code


def _repo_not_found(status=404):
    return HubError(status, "Repository not found", "RepoNotFound")


def _safe_path(path):
    parts = PurePosixPath(path).parts
    if not path or path.startswith("/") or "\\" in path or any(p in ("..", ".") for p in parts):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return PurePosixPath(path).as_posix()


class LocalHub:
    def __init__(self, root_dir, token="hf_test_token", user="test-user"):
        self.root = Path(root_dir)
        self.token, self.user = token, user
        self.refuse_commits = False
        self.requests = []
        self._lock = threading.Lock()
        self._server = self._thread = None
        self._routes = [
            ("POST", r"/api/repos/create", self._create_repo),
            ("DELETE", r"/api/repos/delete", self._delete_repo),
            ("GET", r"/api/whoami-v2", self._whoami),
            ("POST", r"/api/validate-yaml", lambda req: (200, {"errors": [], "warnings": []})),
            ("GET", _API + r"(?:/revision/(?P<rev>[^/]+))?", self._repo_info),
            ("GET", _API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", self._tree),
            ("POST", _API + r"/preupload/(?P<rev>[^/]+)", self._preupload),
            ("POST", _API + r"/commit/(?P<rev>[^/]+)", self._commit),
            ("GET HEAD", r"/(?:(?P<type>datasets|spaces)/)?" + _REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)",
             self._resolve),
        ]

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self):
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self):
        self.root.mkdir(parents=True, exist_ok=True)
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ storage
    def repo_dir(self, repo_id, repo_type="model"):
        """Folder holding the committed files of a repo (nothing else is stored in it)."""
        return self.root / f"{repo_type}s" / repo_id

    def _meta_path(self, repo_type, repo_id):
        return self.root / ".meta" / f"{repo_type}s" / f"{repo_id}.json"

    def _load_meta(self, repo_type, repo_id):
        path = self._meta_path(repo_type, repo_id)
        return json.loads(path.read_text()) if path.exists() else None

    def _save_meta(self, meta):
        path = self._meta_path(meta["type"], meta["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(meta, indent=1))

    def _files(self, meta):
        base = self.repo_dir(meta["id"], meta["type"])
        return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())

    def _repo_url(self, repo_type, repo_id):
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return f"{self.url}/{prefix}{repo_id}"

    # ------------------------------------------------------------------ request helpers
    def _authorized(self, req, required):
        auth = req.headers.get("Authorization")
        if auth is None:
            if required:
                raise HubError(401, "Invalid username or password.")
            return False
        if auth != f"Bearer {self.token}":
            raise HubError(401, "Invalid credentials in Authorization header")
        return True

    def _repo(self, req, groups, write=False):
        """Checks auth and returns the repo metadata, or raises RepoNotFound / RevisionNotFound."""
        authorized = self._authorized(req, required=write)
        repo_type = _TYPES[groups.get("type") or "models"]
        meta = self._load_meta(repo_type, groups["repo"])
        if meta is None:
            raise _repo_not_found()
        if meta["private"] and not authorized:
            raise _repo_not_found(401)
        rev = groups.get("rev")
        if rev is not None and rev not in ("main", meta["sha"]):
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return meta

    # ------------------------------------------------------------------ endpoints
    def _create_repo(self, req):
        self._authorized(req, required=True)
        body = req.json()
        repo_type = body.get("type") or "model"
        if repo_type not in _TYPES.values() or not body.get("name"):
            raise HubError(400, "Invalid repo type or name")
        repo_id = f"{body.get('organization') or self.user}/{body['name']}"
        url = self._repo_url(repo_type, repo_id)
        with self._lock:
            if self._load_meta(repo_type, repo_id) is not None:
                return 409, {"error": f"You already created this {repo_type} repo", "url": url}
            sha = hashlib.sha1(f"{repo_type}/{repo_id}/{time.time_ns()}".encode()).hexdigest()
            self.repo_dir(repo_id, repo_type).mkdir(parents=True, exist_ok=True)
            self._save_meta({"id": repo_id, "type": repo_type, "sha": sha, "commits": [sha],
                             "private": body.get("visibility", "public") != "public",
                             "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())})
        return 200, {"url": url, "name": repo_id, "id": repo_id}

    def _delete_repo(self, req):
        self._authorized(req, required=True)
        body = req.json()
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or self.user}/{body.get('name')}"
        with self._lock:
            if self._load_meta(repo_type, repo_id) is None:
                raise _repo_not_found()
            shutil.rmtree(self.repo_dir(repo_id, repo_type))
            self._meta_path(repo_type, repo_id).unlink()
        return 200, {}

    def _whoami(self, req):
        self._authorized(req, required=True)
        return 200, {"type": "user", "name": self.user, "fullname": self.user, "orgs": [],
                     "auth": {"type": "access_token", "accessToken": {"role": "write"}}}

    def _repo_info(self, req, **groups):
        meta = self._repo(req, groups)
        return 200, {"id": meta["id"], "sha": meta["sha"], "private": meta["private"],
                     "lastModified": meta["lastModified"], "tags": [],
                     "siblings": [{"rfilename": f} for f in self._files(meta)]}

    def _tree(self, req, path=None, **groups):
        meta = self._repo(req, groups)
        base = self.repo_dir(meta["id"], meta["type"])
        top = base / _safe_path(unquote(path)) if path else base
        if not top.is_dir():
            raise HubError(404, f"Folder {path!r} does not exist", "EntryNotFound")
        recursive = parse_qs(req.query).get("recursive", ["false"])[0].lower() == "true"
        entries = []
        for p in sorted(top.rglob("*") if recursive else top.iterdir()):
            rel = p.relative_to(base).as_posix()
            if p.is_file():
                data = p.read_bytes()
                entries.append({"type": "file", "path": rel, "size": len(data), "oid": git_blob_sha1(data)})
            else:
                entries.append({"type": "directory", "path": rel, "oid": hashlib.sha1(rel.encode()).hexdigest()})
        return 200, entries

    def _preupload(self, req, **groups):
        meta = self._repo(req, groups, write=True)
        base = self.repo_dir(meta["id"], meta["type"])
        files = []
        for item in req.json().get("files", []):
            info = {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False}
            existing = base / _safe_path(item["path"])
            if existing.is_file():  # lets the client skip unchanged files
                info["oid"] = git_blob_sha1(existing.read_bytes())
            files.append(info)
        return 200, {"files": files, "commitOid": meta["sha"]}

    def _commit(self, req, **groups):
        meta = self._repo(req, groups, write=True)
        if self.refuse_commits:
            raise HubError(403, "Commits are refused by this test server (refuse_commits=True)")
        lines = [json.loads(line) for line in req.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first NDJSON line must be the commit header")
        header, writes, deletes = lines[0]["value"], {}, []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            path = _safe_path(value.get("path", ""))
            if key == "file":
                content = value.get("content", "")
                writes[path] = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
            elif key in ("deletedFile", "deletedFolder"):
                deletes.append((key, path.rstrip("/")))
            elif key == "lfsFile":
                raise HubError(400, "LFS files are not supported by this test server")
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        base = self.repo_dir(meta["id"], meta["type"])
        with self._lock:  # validate everything first, then apply: a failed commit stores nothing
            if self._load_meta(meta["type"], meta["id"])["sha"] != meta["sha"]:
                raise HubError(409, "Concurrent commit, please retry")
            parent = header.get("parentCommit")
            if parent is not None and parent != meta["sha"]:
                raise HubError(412, f"Parent commit {parent} is not the head of main ({meta['sha']})")
            for key, path in deletes:
                target = base / path
                if not (target.is_file() if key == "deletedFile" else target.is_dir()):
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            for key, path in deletes:
                if key == "deletedFile":
                    (base / path).unlink()
                else:
                    shutil.rmtree(base / path)
            for path, data in writes.items():
                target = base / path
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".tmp-upload")
                tmp.write_bytes(data)
                os.replace(tmp, target)
            for d in sorted((p for p in base.rglob("*") if p.is_dir()), reverse=True):
                if not any(d.iterdir()):
                    d.rmdir()
            digest = hashlib.sha1(meta["sha"].encode() + header.get("summary", "").encode())
            for path in self._files(meta):
                digest.update(path.encode() + b"\0" + (base / path).read_bytes())
            meta["sha"] = digest.hexdigest()
            meta["commits"].append(meta["sha"])
            meta["lastModified"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
            self._save_meta(meta)
        url = f"{self._repo_url(meta['type'], meta['id'])}/commit/{meta['sha']}"
        return 200, {"success": True, "commitOid": meta["sha"], "commitUrl": url, "pullRequestUrl": None}

    def _resolve(self, req, path, **groups):
        meta = self._repo(req, groups)
        headers = {"X-Repo-Commit": meta["sha"]}
        target = self.repo_dir(meta["id"], meta["type"]) / _safe_path(unquote(path))
        if not target.is_file():
            raise HubError(404, "Entry not found", "EntryNotFound", headers)
        data = target.read_bytes()
        headers.update({"ETag": f'"{git_blob_sha1(data)}"', "Content-Type": "application/octet-stream"})
        return 200, data, headers

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, req):
        self.requests.append((req.command, req.path))
        try:
            for methods, pattern, func in self._routes:
                match = re.fullmatch(pattern, req.route)
                if req.command in methods.split() and match:
                    groups = {k: (unquote(v) if k in ("repo", "rev") and v else v)
                              for k, v in match.groupdict().items()}
                    status, body, *headers = func(req, **groups)
                    return req.reply(status, body, headers[0] if headers else {})
            raise HubError(404, f"No route for {req.command} {req.route}")
        except HubError as err:
            req.reply(err.status, {"error": err.message}, {"X-Error-Message": err.message, **err.headers})
        except Exception as err:  # a bug in this server: make it visible to the test
            req.reply(500, {"error": f"{type(err).__name__}: {err}"}, {})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response carries a Content-Length
    hub: LocalHub

    def log_message(self, *args):
        pass

    def _handle(self):
        split = urlsplit(self.path)
        self.route, self.query = split.path, split.query
        self.body = self._read_body()  # always drain the body so the connection can be reused
        self.hub._dispatch(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle

    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def json(self):
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            raise HubError(400, "Request body is not valid JSON")

    def reply(self, status, body, headers):
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **headers}
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


# Prepended to the scripts tests run in a subprocess to load a folder "where rwkv_hf is not
# installed": every rwkv_hf import fails, so only the folder's remote code can run.
NO_RWKV_HF = '''
import sys
class _NoRwkvHf:
    def find_spec(self, name, path=None, target=None):
        if name == "rwkv_hf" or name.startswith("rwkv_hf."):
            raise ImportError(name + " is blocked in this test")
sys.meta_path.insert(0, _NoRwkvHf())
'''
