"""A small in-memory Hugging Face Hub-protocol server for tests (stdlib only).

It speaks enough of the Hub HTTP protocol for the real ``huggingface_hub``, ``transformers`` and ``peft`` clients to
create a repo, upload files (regular files inline in the NDJSON commit, large/binary files through the git-LFS batch
API, basic transfer only) and download them again (``HEAD``/``GET`` on ``/resolve``), without any network.

Usage::

    with HubServer() as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "test-token", ...}
        # run the client in a subprocess: huggingface_hub reads HF_ENDPOINT when it is imported
        ...
        hub.files("me/tiny")  # {"config.json": b"...", ...}

Storage: ``repos[(repo_type, repo_id)]`` is a :class:`Repo` holding commits (40-hex sha, full file snapshot, parent)
and branches (``main`` at creation, pointing at an initial commit that adds ``.gitattributes``, like the real Hub).
Xet is never offered (no ``X-Xet-*`` headers), nor LFS multipart (no ``chunk_size``): clients must run with
``HF_HUB_DISABLE_XET=1``. Requests to routes this server does not know get a 404 JSON answer and are recorded in
``unknown_requests`` so missing endpoints are easy to spot.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# Words that can follow a repo id in /api/{type}s/... routes (so "name/<word>" is not a "namespace/name" id).
API_SUBPATHS = {"revision", "tree", "preupload", "commit", "commits", "paths-info", "refs", "branch", "tag", "treesize"}
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".npy", ".npz")
LFS_SUFFIXES += (".pkl", ".pickle", ".zip", ".gz", ".tar", ".arrow", ".parquet", ".model", ".tflite", ".ot")
GITATTRIBUTES = (
    b"".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n".encode() for suffix in LFS_SUFFIXES)
    + b"*tfevents* filter=lfs diff=lfs merge=lfs -text\n"
)


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as ``oid``/``ETag`` of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class StoredFile:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return lfs_pointer(self.sha256, len(self.data))

    @property
    def git_oid(self) -> str:
        """Git blob id: of the LFS pointer for LFS files, of the content otherwise."""
        return git_blob_sha1(self.pointer if self.lfs else self.data)


@dataclass
class Commit:
    sha: str
    files: dict[str, StoredFile]
    parent: str | None
    title: str
    message: str = ""
    date: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"))


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool = False
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    lfs_oids: set[str] = field(default_factory=set)  # LFS objects uploaded to this repo (the batch API dedups on it)
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"))

    def resolve(self, revision: str) -> Commit | None:
        revision = unquote(revision)
        if revision.startswith("refs/heads/"):
            revision = revision[len("refs/heads/") :]
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if re.fullmatch(r"[0-9a-f]{5,40}", revision):
            matches = [c for sha, c in self.commits.items() if sha.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        return None

    def history(self, revision: str) -> list[Commit]:
        commit, out = self.resolve(revision), []
        while commit is not None:
            out.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return out


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class HubServer:
    """In-memory Hub on ``127.0.0.1:<free port>``; a context manager (``start``/``stop``) with introspection."""

    def __init__(self, username: str = "me", lfs_threshold: int = 10_000, host: str = "127.0.0.1", port: int = 0):
        self.username = username
        self.lfs_threshold = lfs_threshold
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # oid (sha256) -> content, uploaded through the LFS basic transfer
        self.lfs_uploads: list[str] = []  # oids PUT to the LFS upload href, in order (one entry per upload)
        self.lfs_upload_log: list[tuple[str, str, str]] = []  # (repo_type, repo_id, oid) per upload
        self.lfs_verified: list[str] = []
        self.requests: list[tuple[str, str]] = []  # (method, path with query)
        self.unknown_requests: list[tuple[str, str]] = []
        self.faults: list[dict] = []  # see fail_next
        self.lock = threading.RLock()
        self._host, self._port = host, port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._counter = 0

    def fail_next(self, method: str, match: str, status: int = 503, times: int = 1) -> None:
        """Answer the next `times` requests whose path contains `match` with `status` (fault injection)."""
        with self.lock:
            self.faults.append({"method": method, "match": match, "status": status, "times": times})

    # ---------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubServer is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        if self._httpd is not None:
            return self
        server = self

        class Handler(_HubHandler):
            hub = server

        self._httpd = _Server((self._host, self._port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd, self._thread = None, None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- introspection / direct manipulation
    def get_repo(self, repo_id: str, repo_type: str = "model") -> Repo | None:
        with self.lock:
            repo = self.repos.get((repo_type, repo_id))
            if repo is None and "/" not in repo_id:  # like the Hub: "name" falls back to the user's namespace
                repo = self.repos.get((repo_type, f"{self.username}/{repo_id}"))
            return repo

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Snapshot of a repo at ``revision``: path -> content (real content, also for LFS files)."""
        repo = self.get_repo(repo_id, repo_type)
        if repo is None:
            raise KeyError(f"no {repo_type} repo {repo_id!r}")
        commit = repo.resolve(revision)
        if commit is None:
            raise KeyError(f"no revision {revision!r} in {repo_id!r}")
        return {path: f.data for path, f in commit.files.items()}

    def lfs_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> set[str]:
        """Paths stored as LFS files at ``revision``."""
        repo = self.get_repo(repo_id, repo_type)
        commit = repo.resolve(revision) if repo else None
        if commit is None:
            raise KeyError(f"no {repo_type} repo/revision {repo_id!r}@{revision!r}")
        return {path for path, f in commit.files.items() if f.lfs}

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[Commit]:
        """Commits reachable from ``revision``, newest first."""
        repo = self.get_repo(repo_id, repo_type)
        if repo is None:
            raise KeyError(f"no {repo_type} repo {repo_id!r}")
        return repo.history(revision)

    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> Repo:
        """Create a repo directly (no HTTP); raises :class:`HubError` (409) if it exists."""
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, "You already created this repo", headers={"X-Error-Code": "RepoExists"})
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private)
            self.repos[(repo_type, repo_id)] = repo
            self._add_commit(repo, "main", {".gitattributes": StoredFile(GITATTRIBUTES, lfs=False)}, "initial commit")
            return repo

    def _add_commit(
        self, repo: Repo, branch: str, files: dict[str, StoredFile], title: str, message: str = ""
    ) -> Commit:
        with self.lock:
            self._counter += 1
            parent = repo.branches.get(branch)
            digest = hashlib.sha1()
            digest.update(f"{repo.repo_type}/{repo.repo_id}\0{parent}\0{title}\0{self._counter}\0".encode())
            for path in sorted(files):
                digest.update(f"{path}\0{files[path].git_oid}\n".encode())
            commit = Commit(sha=digest.hexdigest(), files=dict(files), parent=parent, title=title, message=message)
            repo.commits[commit.sha] = commit
            repo.branches[branch] = commit.sha
            return commit

    def upload_mode(self, path: str, size: int, sample: bytes) -> str:
        if path.endswith(LFS_SUFFIXES) or size > self.lfs_threshold or b"\0" in sample:
            return "lfs"
        return "regular"

    def repo_url(self, repo: Repo) -> str:
        return f"{self.url}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for idle keep-alive connections of clients still alive


def _read_chunked(rfile) -> bytes:
    body = bytearray()
    while True:
        size_line = rfile.readline(65537)
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline(65537) not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return bytes(body)
        body += rfile.read(size)
        rfile.readline(65537)  # CRLF after each chunk


class _HubHandler(BaseHTTPRequestHandler):
    hub: HubServer  # set on the subclass built in HubServer.start
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds of silence on a keep-alive connection before the handler thread gives up
    server_version = "FakeHub/0.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    # ---------------------------------------------------------------- plumbing
    def _dispatch(self) -> None:
        method = self.command
        split = urlsplit(self.path)
        path, query = unquote(split.path), parse_qs(split.query)
        raw_path = split.path
        body = self._read_body()
        with self.hub.lock:
            self.hub.requests.append((method, self.path))
            fault = next(
                (f for f in self.hub.faults if f["method"] == method and f["match"] in path and f["times"]), None
            )
            if fault:
                fault["times"] -= 1
        if fault:  # injected by a test: a transient (or lasting) server error
            self._send_json(fault["status"], {"error": "injected fault"}, {})
            return
        try:
            result = self._route(method, path, raw_path, query, body)
        except HubError as err:
            self._send_json(err.status, {"error": err.message}, err.headers | self._error_code(err))
            return
        except Exception as err:  # a bug in this server: answer 500 with the reason instead of hanging
            self._send_json(500, {"error": f"hub_server bug: {type(err).__name__}: {err}"}, {})
            raise
        if result is None:
            with self.hub.lock:
                self.hub.unknown_requests.append((method, self.path))
            self._send_json(404, {"error": f"hub_server: no route for {method} {path}"}, {})

    @staticmethod
    def _error_code(err: HubError) -> dict[str, str]:
        return {"X-Error-Code": err.code} if err.code else {}

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return _read_chunked(self.rfile)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str], content_type: str | None = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> bool:
        content_type = (headers or {}).pop("Content-Type", "application/json; charset=utf-8")
        self._send(status, json.dumps(payload).encode(), headers or {}, content_type)
        return True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    # ---------------------------------------------------------------- helpers
    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.hub.get_repo(repo_id, repo_type)
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {unquote(revision)}", "RevisionNotFound")
        return commit

    @staticmethod
    def _split_api_repo(rest: str) -> tuple[str, list[str]]:
        """'ns/name/tree/main/x' -> ('ns/name', ['tree', 'main', 'x']); 'name/tree/main' -> ('name', [...])."""
        parts = rest.split("/")
        if len(parts) >= 2 and parts[1] not in API_SUBPATHS:
            return f"{parts[0]}/{parts[1]}", parts[2:]
        return parts[0], parts[1:]

    @staticmethod
    def _raw_segments_after(raw_path: str, marker: str, count: int) -> list[str]:
        """Raw (still %-quoted) segments following ``marker`` so quoted revisions like refs%2Fpr%2F1 stay whole."""
        raw = raw_path.split(marker, 1)[1]
        return raw.split("/", count)

    def _file_entry(self, path: str, f: StoredFile) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": f.git_oid, "size": len(f.data), "path": path}
        if f.lfs:
            entry["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": len(f.pointer)}
        return entry

    @staticmethod
    def _folder_entry(path: str, commit: Commit) -> dict[str, Any]:
        oid = hashlib.sha1(f"{commit.sha}\0{path}".encode()).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": path}

    def _tree(self, commit: Commit, prefix: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = prefix.strip("/")
        base = f"{prefix}/" if prefix else ""
        entries: dict[str, dict[str, Any]] = {}
        for path in sorted(commit.files):
            if not path.startswith(base):
                continue
            rel = path[len(base) :].split("/")
            for depth in range(1, len(rel)):  # intermediate folders
                folder = base + "/".join(rel[:depth])
                entries.setdefault(folder, self._folder_entry(folder, commit))
                if not recursive:
                    break
            if recursive or len(rel) == 1:
                entries[path] = self._file_entry(path, commit.files[path])
        if prefix and not entries:
            raise HubError(404, f"{prefix} does not exist on this revision", "EntryNotFound")
        return sorted(entries.values(), key=lambda e: (e["type"] != "directory", e["path"]))

    def _repo_info(self, repo: Repo, commit: Commit) -> dict[str, Any]:
        siblings = []
        for path, f in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path, "size": len(f.data), "blobId": f.git_oid}
            if f.lfs:
                sibling["lfs"] = {"size": len(f.data), "sha256": f.sha256, "pointerSize": len(f.pointer)}
            siblings.append(sibling)
        author = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
        return {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": author,
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(len(f.data) for f in commit.files.values()),
        }

    # ---------------------------------------------------------------- routing
    def _route(self, method: str, path: str, raw_path: str, query: dict[str, list[str]], body: bytes) -> Any:
        if method == "HEAD" and "/resolve/" not in path:
            method = "GET"  # HEAD on an API route: same answer, no body (see _send)
        if path == "/api/whoami-v2" and method == "GET":
            return self._send_json(200, self._whoami())
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo(json.loads(body or b"{}"))
        if path == "/api/repos/delete" and method == "DELETE":
            return self._delete_repo(json.loads(body or b"{}"))
        if path == "/api/validate-yaml" and method == "POST":
            return self._send_json(200, {"errors": [], "warnings": []})
        m = re.fullmatch(r"/api/(models|datasets|spaces)/(.+)", path)
        if m:
            return self._api_repo(method, REPO_TYPES[m.group(1)], m.group(2), raw_path, query, body)
        m = re.fullmatch(r"/(?:(datasets|spaces)/)?(.+?)\.git/info/lfs/objects/batch", path)
        if m and method == "POST":
            return self._lfs_batch(REPO_TYPES[m.group(1)] if m.group(1) else "model", m.group(2), body)
        m = re.fullmatch(r"/lfs-(upload|verify)/(model|dataset|space)/(.+)/([0-9a-f]{64})", path)
        if m and (m.group(1), method) in (("upload", "PUT"), ("verify", "POST")):
            repo = self._repo(m.group(2), m.group(3))
            return (self._lfs_put if m.group(1) == "upload" else self._lfs_verify)(repo, m.group(4), body)
        if "/resolve/" in path and method in ("GET", "HEAD"):
            return self._resolve(raw_path)
        return None

    def _whoami(self) -> dict[str, Any]:
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        if not token:
            raise HubError(401, "Invalid credentials in Authorization header")
        return {
            "type": "user",
            "id": "0" * 24,
            "name": self.hub.username,
            "fullname": self.hub.username,
            "email": f"{self.hub.username}@example.com",
            "emailVerified": True,
            "canPay": False,
            "isPro": False,
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "test-token", "role": "write"}},
        }

    def _create_repo(self, payload: dict[str, Any]) -> bool:
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        repo_id = f"{payload.get('organization') or self.hub.username}/{payload['name']}"
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        try:
            repo = self.hub.create_repo(repo_id, repo_type, private=private)
        except HubError as err:
            existing = self.hub.get_repo(repo_id, repo_type)
            url = self.hub.repo_url(existing) if existing else ""
            return self._send_json(409, {"error": err.message, "url": url}, dict(err.headers))
        return self._send_json(200, {"url": self.hub.repo_url(repo), "name": repo_id, "id": repo_id})

    def _delete_repo(self, payload: dict[str, Any]) -> bool:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.hub.username}/{payload['name']}"
        with self.hub.lock:
            if self.hub.repos.pop((repo_type, repo_id), None) is None:
                raise HubError(404, "Repository not found", "RepoNotFound")
        return self._send_json(200, {})

    def _api_repo(
        self, method: str, repo_type: str, rest: str, raw_path: str, query: dict[str, list[str]], body: bytes
    ) -> Any:
        repo_id, sub = self._split_api_repo(rest)
        repo = self._repo(repo_type, repo_id)
        # raw (quoted) segments after the repo id, to keep e.g. "refs%2Fpr%2F1" as one revision
        prefix = f"/api/{repo_type}s/"
        raw_rest = raw_path[len(prefix) :]
        raw_sub = raw_rest.split("/")[len(repo_id.split("/")) :]
        action = sub[0] if sub else None
        revision = unquote(raw_sub[1]) if len(raw_sub) > 1 else "main"
        if action is None and method == "GET":
            return self._send_json(200, self._repo_info(repo, self._commit(repo, "main")))
        if action == "revision" and method == "GET":
            return self._send_json(200, self._repo_info(repo, self._commit(repo, revision)))
        if action == "tree" and method == "GET":
            commit = self._commit(repo, revision)
            sub_path = "/".join(unquote(s) for s in raw_sub[2:])
            recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true")
            return self._send_json(200, self._tree(commit, sub_path, recursive))
        if action == "paths-info" and method == "POST":
            return self._paths_info(repo, revision, body)
        if action == "preupload" and method == "POST":
            return self._preupload(repo, revision, json.loads(body or b"{}"))
        if action == "commit" and method == "POST":
            return self._commit_ndjson(repo, revision, body, query)
        if action == "refs" and method == "GET":
            branches = [
                {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha} for name, sha in repo.branches.items()
            ]
            return self._send_json(200, {"branches": branches, "converts": [], "tags": [], "pullRequests": []})
        if action == "commits" and method == "GET":
            self._commit(repo, revision)
            items = [
                {
                    "id": c.sha,
                    "title": c.title,
                    "message": c.message,
                    "authors": [{"user": self.hub.username}],
                    "date": c.date,
                }
                for c in repo.history(revision)
            ]
            return self._send_json(200, items)
        if action == "branch" and method == "POST" and len(sub) > 1:
            payload = json.loads(body or b"{}")
            base = self._commit(repo, payload.get("startingPoint") or "main")
            with self.hub.lock:
                if revision in repo.branches:
                    raise HubError(409, f"Branch {revision} already exists")
                repo.branches[revision] = base.sha
            return self._send_json(200, {})
        if action == "branch" and method == "DELETE" and len(sub) > 1:
            with self.hub.lock:
                if repo.branches.pop(revision, None) is None:
                    raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return self._send_json(200, {})
        return None

    def _paths_info(self, repo: Repo, revision: str, body: bytes) -> bool:
        commit = self._commit(repo, revision)
        content_type = self.headers.get("Content-Type", "")
        if "json" in content_type:
            paths = json.loads(body or b"{}").get("paths", [])
        else:  # the client sends form data: paths=a&paths=b&expand=False
            paths = parse_qs(body.decode(), keep_blank_values=True).get("paths", [])
        out = []
        folders = {"/".join(p.split("/")[:i]) for p in commit.files for i in range(1, p.count("/") + 1)}
        for p in paths:
            p = p.strip("/")
            if p in commit.files:
                out.append(self._file_entry(p, commit.files[p]))
            elif p in folders:
                out.append(self._folder_entry(p, commit))
        return self._send_json(200, out)

    def _preupload(self, repo: Repo, revision: str, payload: dict[str, Any]) -> bool:
        commit = repo.resolve(revision)  # a new branch may not exist yet
        out = []
        for item in payload.get("files", []):
            sample = base64.b64decode(item.get("sample") or "")
            mode = self.hub.upload_mode(item["path"], int(item.get("size") or 0), sample)
            entry: dict[str, Any] = {"path": item["path"], "uploadMode": mode, "shouldIgnore": False}
            existing = commit.files.get(item["path"]) if commit else None
            if existing is not None:  # lets the client skip unchanged files (sha256 for lfs, git sha1 otherwise)
                entry["oid"] = existing.sha256 if mode == "lfs" else git_blob_sha1(existing.data)
            out.append(entry)
        return self._send_json(200, {"files": out, "commitOid": commit.sha if commit else None})

    def _lfs_batch(self, repo_type: str, repo_id: str, body: bytes) -> bool:
        repo = self._repo(repo_type, repo_id)
        payload = json.loads(body or b"{}")
        if payload.get("operation") != "upload":
            raise HubError(400, "hub_server only supports LFS uploads")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            with self.hub.lock:
                present = oid in repo.lfs_oids
            if not present:  # no "chunk_size" header => basic single PUT, never multipart
                where = f"{repo.repo_type}/{repo.repo_id}/{oid}"
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.url}/lfs-upload/{where}", "header": {}},
                    "verify": {"href": f"{self.hub.url}/lfs-verify/{where}", "header": {}},
                }
            objects.append(entry)
        headers = {"Content-Type": "application/vnd.git-lfs+json"}
        return self._send_json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, headers)

    def _lfs_put(self, repo: Repo, oid: str, body: bytes) -> bool:
        actual = hashlib.sha256(body).hexdigest()
        if actual != oid:
            raise HubError(400, f"sha256 mismatch: expected {oid}, got {actual}")
        with self.hub.lock:
            self.hub.lfs_objects[oid] = body
            repo.lfs_oids.add(oid)
            self.hub.lfs_uploads.append(oid)
            self.hub.lfs_upload_log.append((repo.repo_type, repo.repo_id, oid))
        self._send(200, b"", {"ETag": f'"{hashlib.md5(body).hexdigest()}"'})
        return True

    def _lfs_verify(self, repo: Repo, oid: str, body: bytes) -> bool:
        payload = json.loads(body or b"{}")
        with self.hub.lock:
            data = self.hub.lfs_objects.get(oid) if oid in repo.lfs_oids else None
            if data is None or payload.get("oid") != oid or int(payload.get("size", -1)) != len(data):
                raise HubError(404, f"LFS object {oid} not found or wrong size")
            self.hub.lfs_verified.append(oid)
        return self._send_json(200, {"oid": oid, "size": len(data)})

    def _commit_ndjson(self, repo: Repo, revision: str, body: bytes, query: dict[str, list[str]]) -> bool:
        if (query.get("create_pr") or ["0"])[0] == "1":
            raise HubError(400, "hub_server does not support pull requests")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next((item["value"] for item in lines if item.get("key") == "header"), None)
        if header is None:
            raise HubError(400, "Missing header line in commit payload")
        with self.hub.lock:
            current = repo.resolve(revision)
            if current is None:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            parent = header.get("parentCommit")
            if parent and not current.sha.startswith(parent):
                raise HubError(412, f"parentCommit {parent} is not the head of {revision} ({current.sha})")
            files = dict(current.files)
            for item in lines:
                key, value = item.get("key"), item.get("value") or {}
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
                    files[value["path"]] = StoredFile(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    data = self.hub.lfs_objects.get(value["oid"]) if value["oid"] in repo.lfs_oids else None
                    if data is None:
                        raise HubError(400, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                    files[value["path"]] = StoredFile(data, lfs=True)
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    for p in [p for p in files if p.startswith(folder)]:
                        del files[p]
                elif key != "header":
                    raise HubError(400, f"Unsupported commit operation {key!r}")
            branch = unquote(revision)
            if branch not in repo.branches:
                raise HubError(400, f"Can only commit to a branch, not {branch!r}")
            commit = self.hub._add_commit(
                repo, branch, files, header.get("summary") or "update", header.get("description") or ""
            )
        payload = {
            "success": True,
            "commitOid": commit.sha,
            "commitUrl": f"{self.hub.repo_url(repo)}/commit/{commit.sha}",
            "commitMessage": commit.title,
            "hookOutput": "",
            "pullRequestUrl": None,
        }
        return self._send_json(200, payload)

    def _resolve(self, raw_path: str) -> bool:
        head, tail = raw_path.split("/resolve/", 1)
        parts = head.lstrip("/").split("/")
        repo_type = "model"
        if len(parts) > 1 and parts[0] in ("datasets", "spaces"):
            repo_type = REPO_TYPES[parts[0]]
            parts = parts[1:]
        repo = self._repo(repo_type, unquote("/".join(parts)))
        raw_revision, _, raw_file = tail.partition("/")
        commit = self._commit(repo, unquote(raw_revision))
        filename = unquote(raw_file)
        stored = commit.files.get(filename)
        if stored is None:
            raise HubError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": commit.sha})
        data = stored.data
        etag = stored.sha256 if stored.lfs else git_blob_sha1(data)
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{quote(filename.rsplit("/", 1)[-1])}"',
            "Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()),
        }
        if stored.lfs:
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(len(data))
        status = 200
        range_header = self.headers.get("Range")
        if range_header:
            m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", range_header)
            if not m or (not m.group(1) and not m.group(2)):
                raise HubError(416, f"Unsupported range {range_header!r}")
            start_s, end_s = m.groups()
            if start_s:
                start, end = int(start_s), min(int(end_s) if end_s else len(data) - 1, len(data) - 1)
            else:  # suffix range: last N bytes
                start, end = max(len(data) - int(end_s), 0), len(data) - 1
            if start >= len(data) or start > end:
                raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        self._send(status, data, headers, "application/octet-stream")
        return True


# ---- running real clients against the server -----------------------------------------------------
def client_env(hub: HubServer, hf_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    for proxy in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env.pop(proxy, None)
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HUB_DISABLE_XET="1",
        HF_TOKEN="test-token",
        HF_HUB_OFFLINE="0",
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",
        HF_HUB_ETAG_TIMEOUT="20",
        HF_HUB_DOWNLOAD_TIMEOUT="20",
        NO_PROXY="127.0.0.1,localhost",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    return env


def run_client(
    hub: HubServer, hf_home: Path, code: str, timeout: int = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter whose HF clients talk to `hub` (HF_ENDPOINT is read at import)."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**client_env(hub, hf_home), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc


def last_json_line(stdout: str):
    """The last JSON object or list a client printed (libraries may print other lines before it)."""
    return json.loads([line for line in stdout.splitlines() if line.startswith(("{", "["))][-1])
