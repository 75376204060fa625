"""A local stand-in for the Hugging Face Hub, for tests that exercise the real download path.

It serves, on 127.0.0.1, the endpoints huggingface_hub 1.33 calls for snapshot_download,
hf_hub_download and model_info (read from its client code):

- GET  /api/models/{repo}/revision/{rev}      repo info: sha (commit) + siblings
- GET  /api/models/{repo}                       same, for the default branch
- GET  /api/models/{repo}/tree/{rev}[/{path}]   recursive file listing (path, size, oid)
- HEAD /{repo}/resolve/{rev}/{file}             X-Repo-Commit, ETag, Content-Length
- GET  /{repo}/resolve/{rev}/{file}             the bytes (optionally slowly, in chunks)

Errors carry the X-Error-Code header that huggingface_hub turns into typed exceptions:
GatedRepo (403), RepoNotFound (404), RevisionNotFound (404), EntryNotFound (404); a repo
can also answer 500 (server error). Point HF_ENDPOINT at `url` in a subprocess (the client
reads HF_ENDPOINT at import)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    repo_id: str
    revisions: dict[str, dict[str, bytes]]  # revision name -> {path: bytes}
    gated: bool = False
    server_error: bool = False
    slow_seconds: float = 0.0  # spread each file download over about this long
    commits: dict[str, str] = field(default_factory=dict)  # revision name -> commit sha

    def __post_init__(self) -> None:
        for name in self.revisions:
            self.commits[name] = hashlib.sha1(f"{self.repo_id}@{name}".encode()).hexdigest()

    def files_at(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        for name, commit in self.commits.items():
            if revision in (name, commit):
                return commit, self.revisions[name]
        return None


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` as {relative posix path: bytes}."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class HubStandIn:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add(self, repo_id: str, files: dict[str, bytes] | None = None, *, revisions: dict[str, dict[str, bytes]]
            | None = None, gated: bool = False, server_error: bool = False, slow_seconds: float = 0.0) -> Repo:
        revs = dict(revisions or {})
        if files is not None:
            revs.setdefault("main", files)
        repo = Repo(repo_id, revs, gated=gated, server_error=server_error, slow_seconds=slow_seconds)
        self.repos[repo_id] = repo
        return repo

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                return None

            def do_HEAD(self) -> None:  # noqa: N802 - http.server API
                standin._handle(self, head=True)

            def do_GET(self) -> None:  # noqa: N802
                standin._handle(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- request handling ---------------------------------------------------------------
    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              head: bool = False, slow: float = 0.0) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if head or not body:
            return
        if slow <= 0:
            h.wfile.write(body)
            return
        chunks = 10
        size = max(1, -(-len(body) // chunks))
        for i in range(0, len(body), size):
            h.wfile.write(body[i:i + size])
            h.wfile.flush()
            time.sleep(slow / chunks)

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str | None, message: str, head: bool) -> None:
        headers = {"Content-Type": "application/json"}
        if code:
            headers["X-Error-Code"] = code
        headers["X-Error-Message"] = message
        self._send(h, status, json.dumps({"error": message}).encode(), headers, head)

    def _find_repo(self, parts: list[str]) -> tuple[Repo | None, str, list[str]]:
        repo_id = "/".join(parts[:2])
        return self.repos.get(repo_id), repo_id, parts[2:]

    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = urlsplit(h.path).path
        self.requests.append(("HEAD" if head else "GET", path))
        parts = [unquote(p) for p in path.strip("/").split("/")]
        api = parts[:2] == ["api", "models"]
        repo, repo_id, rest = self._find_repo(parts[2:] if api else parts)
        if repo is None:
            return self._error(h, 404, "RepoNotFound", f"Repository {repo_id} not found", head)
        if repo.server_error:
            return self._error(h, 500, None, "Internal Error - We're working hard to fix this as soon as possible!", head)
        if repo.gated:
            return self._error(h, 403, "GatedRepo", f"Access to model {repo_id} is restricted.", head)
        if api:
            return self._api(h, repo, rest, head)
        if len(rest) >= 3 and rest[0] == "resolve":
            return self._resolve(h, repo, rest[1], "/".join(rest[2:]), head)
        return self._error(h, 404, None, "Not found", head)

    def _api(self, h: BaseHTTPRequestHandler, repo: Repo, rest: list[str], head: bool) -> None:
        if not rest:
            rest = ["revision", "main"]
        kind, revision, sub = rest[0], rest[1] if len(rest) > 1 else "main", "/".join(rest[2:])
        found = repo.files_at(revision)
        if found is None:
            return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
        commit, files = found
        if kind == "revision":
            body = {"id": repo.repo_id, "modelId": repo.repo_id, "sha": commit, "private": False,
                    "gated": False, "disabled": False, "tags": [],
                    "siblings": [{"rfilename": name} for name in files]}
        elif kind == "tree":
            prefix = sub.rstrip("/") + "/" if sub else ""
            body = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                    for name, data in files.items() if name.startswith(prefix)]
        else:
            return self._error(h, 404, None, "Not found", head)
        self._send(h, 200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)

    def _resolve(self, h: BaseHTTPRequestHandler, repo: Repo, revision: str, filename: str, head: bool) -> None:
        found = repo.files_at(revision)
        if found is None:
            return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
        commit, files = found
        if filename not in files:
            return self._error(h, 404, "EntryNotFound", f"{filename} does not exist on {revision}", head)
        data = files[filename]
        headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        self._send(h, 200, data, headers, head, slow=repo.slow_seconds)
