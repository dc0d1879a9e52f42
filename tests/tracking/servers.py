"""Real HTTP servers on 127.0.0.1 that record what arrives: a webhook receiver and a minimal Hub.

`LocalHub` implements the part of the Hub's HTTP API that `huggingface_hub`'s `create_repo` and
`upload_folder` call (routes read from huggingface_hub 2.4's hf_api.py / _commit_api.py): repo creation,
README metadata validation, the preupload mode query (every file "regular", so contents travel base64 in the
commit) and the NDJSON commit. Anything else answers 404 and is recorded, so a test sees unexpected calls.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, Any]:
        """multipart/form-data fields (str) and files ((filename, bytes)), parsed by the email package."""
        head = f"Content-Type: {self.headers['content-type']}\r\n\r\n".encode()
        message = email.message_from_bytes(head + self.body, policy=email.policy.HTTP)
        out: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            content = part.get_payload(decode=True)
            filename = part.get_filename()
            out[name] = (filename, content) if filename else content.decode()
        return out


class _Server:
    def __init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                owner._serve(self)

            def do_GET(self) -> None:  # noqa: N802
                owner._serve(self)

            def log_message(self, *args: Any) -> None:
                return

        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        request = Request(
            handler.command,
            handler.path,
            {k.lower(): v for k, v in handler.headers.items()},
            handler.rfile.read(length),
        )
        with self.lock:
            self.requests.append(request)
        status, body = self.answer(request)
        data = json.dumps(body).encode() if body is not None else b""
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def answer(self, request: Request) -> tuple[int, Any]:
        raise NotImplementedError

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class WebhookReceiver(_Server):
    """Answers 204; `fail` maps a path to how many of its first POSTs get HTTP 500; `hold` (an Event) keeps
    every answer waiting until it is set."""

    def __init__(self) -> None:
        self.fail: dict[str, int] = {}
        self.hold: threading.Event | None = None
        super().__init__()

    def answer(self, request: Request) -> tuple[int, Any]:
        if self.hold is not None:
            self.hold.wait(30)
        with self.lock:
            left = self.fail.get(request.path, 0)
            if left:
                self.fail[request.path] = left - 1
                return 500, {"error": "try again"}
        return 204, None

    def posts(self, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path == path]


@dataclass
class Repo:
    private: bool | None
    commits: list[dict[str, Any]] = field(default_factory=list)  # {"summary", "files": {path: bytes}}

    def files(self) -> dict[str, bytes]:
        merged: dict[str, bytes] = {}
        for commit in self.commits:
            merged.update(commit["files"])
        return merged


class LocalHub(_Server):
    """`fail_commits`: how many commit POSTs answer 500 first (huggingface_hub retries those itself); `deny`:
    every request answers 403, as the Hub does for a token without write access."""

    def __init__(self, fail_commits: int = 0, deny: bool = False) -> None:
        self.repos: dict[str, Repo] = {}
        self.fail_commits = fail_commits
        self.fail_creates = 0  # create_repo calls that answer 500 (huggingface_hub does not retry those)
        self.deny = deny
        self.unexpected: list[str] = []
        super().__init__()

    def answer(self, request: Request) -> tuple[int, Any]:
        if self.deny:
            return 403, {"error": "You don't have the rights to create a model under the namespace"}
        parts = request.path.split("?")[0].strip("/").split("/")
        if request.method == "POST" and parts == ["api", "repos", "create"]:
            return self._create(request.json())
        if request.method == "POST" and parts == ["api", "validate-yaml"]:
            return self._validate(request.json()["content"])
        if request.method == "POST" and len(parts) == 6 and parts[:2] == ["api", "models"]:
            repo_id = f"{parts[2]}/{parts[3]}"
            if repo_id not in self.repos:
                return 404, {"error": "Repository not found"}
            if parts[4] == "preupload":
                files = request.json()["files"]
                return 200, {
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                    ]
                }
            if parts[4] == "commit":
                return self._commit(repo_id, request.body)
        if request.method == "GET" and parts == ["api", "agent-harnesses"]:
            return 404, {"error": "not here"}  # huggingface_hub's optional probe; a 404 is what it handles
        self.unexpected.append(f"{request.method} {request.path}")
        return 404, {"error": "not implemented by the local hub"}

    def _create(self, payload: dict[str, Any]) -> tuple[int, Any]:
        if self.fail_creates:
            self.fail_creates -= 1
            return 500, {"error": "Internal Error"}
        repo_id = f"{payload['organization']}/{payload['name']}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
        visibility = payload.get("visibility")
        self.repos[repo_id] = Repo(private=None if visibility is None else visibility == "private")
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}

    def _validate(self, content: str) -> tuple[int, Any]:
        if not content.startswith("---\n"):
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]}
        try:
            meta = yaml.safe_load(content.split("---\n")[1])
        except yaml.YAMLError as exc:
            return 400, {"errors": [{"message": f"invalid YAML: {exc}"}], "warnings": []}
        if not isinstance(meta, dict):
            return 400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []}
        return 200, {"errors": [], "warnings": []}

    def _commit(self, repo_id: str, body: bytes) -> tuple[int, Any]:
        if self.fail_commits:
            self.fail_commits -= 1
            return 500, {"error": "Internal Error - We're working hard to fix this as soon as possible!"}
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        files = {
            item["value"]["path"]: base64.b64decode(item["value"]["content"])
            for item in lines
            if item["key"] == "file"
        }
        repo = self.repos[repo_id]
        repo.commits.append(
            {"summary": header.get("summary"), "files": files, "other": [i["key"] for i in lines]}
        )
        oid = f"{len(repo.commits):040x}"
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "success": True}
