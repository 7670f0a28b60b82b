"""A fake Hugging Face Hub for the hub tests, and the helpers they share.

The fake Hub (served by pytest-httpserver) implements just the part of the Hub API the real
huggingface_hub client uses: repo create and info, branches, the YAML check, preupload, the git-LFS
batch/upload/verify protocol, the NDJSON commit endpoint (with the parent-commit check), tree
listing and file resolve. It keeps repositories as in-memory commits, so tests can assert what was
committed, byte for byte. It speaks git-LFS, not Xet, so the client runs with HF_HUB_DISABLE_XET=1.

Commands that talk to it run as real processes (``hub_cli``): the client reads its endpoint, cache,
token and offline mode from the environment when it is imported.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from conftest import FIXTURES, run_cli
from huggingface_hub import ModelCard
from werkzeug.wrappers import Request, Response

TOKEN = "hf_bitconvertFAKEtoken0123456789secret"
LFS_SUFFIXES = (".safetensors", ".gguf", ".bin")
INITIAL_ATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    sha: str
    parent: str | None
    summary: str
    files: dict[str, bytes]


@dataclass
class Repo:
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    prs: list[str] = field(default_factory=list)


class FakeHub:
    def __init__(self, base: str) -> None:
        self.base = base
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[dict] = []  # every request, in order: method, path, query, headers, body
        self.commit_payloads: list[list[dict]] = []
        self._n = 0
        #: called once before answering the next preupload, to simulate a concurrent push
        self.on_preupload = None

    # state helpers
    def _sha(self) -> str:
        self._n += 1
        return hashlib.sha1(f"commit-{self._n}".encode()).hexdigest()

    def commit(self, repo_id: str, branch: str, files: dict[str, bytes], summary: str, parent: str | None = None):
        repo = self.repos[repo_id]
        head = parent or repo.branches.get(branch)
        tree = dict(repo.commits[head].files) if head else {}
        tree.update(files)
        c = Commit(self._sha(), head, summary, tree)
        repo.commits[c.sha] = c
        return c

    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        repo = self.repos[repo_id] = Repo(private)
        c = self.commit(repo_id, "main", {".gitattributes": INITIAL_ATTRIBUTES}, "initial commit")
        repo.branches["main"] = c.sha
        return repo

    def head(self, repo_id: str, branch: str = "main") -> Commit:
        repo = self.repos[repo_id]
        return repo.commits[repo.branches[branch]]

    def resolve(self, repo_id: str, rev: str) -> Commit | None:
        repo = self.repos[repo_id]
        if rev in repo.branches:
            return repo.commits[repo.branches[rev]]
        return repo.commits.get(rev)

    def calls(self, method: str, pattern: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and re.search(pattern, r["path"])]

    # HTTP
    def __call__(self, request: Request) -> Response:
        body = request.get_data()
        self.requests.append(
            {"method": request.method, "path": request.path, "query": dict(request.args),
             "headers": dict(request.headers), "body": body}
        )
        for pattern, method, handler in self.ROUTES:
            m = re.fullmatch(pattern, request.path)
            if m and request.method in method.split("|"):
                return handler(self, request, body, *m.groups())
        return self._error(404, f"fake hub: no route for {request.method} {request.path}")

    @staticmethod
    def _json(data, status: int = 200, headers: dict | None = None) -> Response:
        return Response(json.dumps(data), status=status, headers=headers or {}, content_type="application/json")

    def _error(self, status: int, message: str, code: str | None = None) -> Response:
        return self._json({"error": message}, status, {"X-Error-Code": code} if code else None)

    def _repo_or_404(self, repo_id: str):
        if repo_id not in self.repos:
            return None, self._error(404, "Repository not found", "RepoNotFound")
        return self.repos[repo_id], None

    def h_create(self, request, body):
        payload = json.loads(body)
        repo_id = f"{payload['organization']}/{payload['name']}"
        if repo_id in self.repos:
            return self._error(409, "You already created this model repo")
        self.create_repo(repo_id, payload.get("visibility") == "private")
        return self._json({"url": f"{self.base}/{repo_id}", "name": repo_id, "id": repo_id})

    def h_info(self, request, body, repo_id, rev=None):
        repo, err = self._repo_or_404(repo_id)
        if err:
            return err
        c = self.resolve(repo_id, rev or "main")
        if c is None:
            return self._error(404, "Invalid rev id", "RevisionNotFound")
        card = {}
        if "README.md" in c.files:
            card = ModelCard(c.files["README.md"].decode()).data.to_dict()
        return self._json({"id": repo_id, "modelId": repo_id, "sha": c.sha, "private": repo.private,
                           "siblings": [{"rfilename": p} for p in sorted(c.files)], "cardData": card})

    def h_branch(self, request, body, repo_id, branch):
        repo, err = self._repo_or_404(repo_id)
        if err:
            return err
        if branch in repo.branches:
            return self._error(409, "Branch already exists")
        start = (json.loads(body or b"{}") or {}).get("startingPoint") or "main"
        repo.branches[branch] = self.resolve(repo_id, start).sha
        return self._json({})

    def h_validate_yaml(self, request, body):
        content = json.loads(body)["content"]
        try:
            ModelCard(content)
        except Exception as exc:  # the Hub rejects metadata it cannot parse
            return self._json({"errors": [{"message": str(exc)}]}, 400)
        return self._json({"errors": [], "warnings": []})

    def h_preupload(self, request, body, repo_id, rev):
        repo, err = self._repo_or_404(repo_id)
        if err:
            return err
        if self.on_preupload is not None:
            hook, self.on_preupload = self.on_preupload, None
            hook()
        files = json.loads(body)["files"]
        return self._json({"files": [
            {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
             "shouldIgnore": False}
            for f in files
        ]})

    def h_lfs_batch(self, request, body, repo_id):
        payload = json.loads(body)
        objects = []
        for o in payload["objects"]:
            entry = {"oid": o["oid"], "size": o["size"]}
            if o["oid"] not in self.lfs:
                entry["authenticated"] = True
                entry["actions"] = {
                    "upload": {"href": f"{self.base}/lfs-storage/{o['oid']}"},
                    "verify": {"href": f"{self.base}/lfs-verify"},
                }
            objects.append(entry)
        return Response(json.dumps({"transfer": "basic", "objects": objects}),
                        content_type="application/vnd.git-lfs+json")

    def h_lfs_put(self, request, body, oid):
        if hashlib.sha256(body).hexdigest() != oid:
            return self._error(400, "sha256 of the uploaded bytes does not match the oid")
        self.lfs[oid] = body
        return Response(b"", status=200)

    def h_lfs_verify(self, request, body):
        o = json.loads(body)
        ok = o["oid"] in self.lfs and len(self.lfs[o["oid"]]) == o["size"]
        return self._json({"message": "ok"}) if ok else self._error(422, "object not uploaded")

    def h_commit(self, request, body, repo_id, rev):
        repo, err = self._repo_or_404(repo_id)
        if err:
            return err
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        self.commit_payloads.append(lines)
        header = next(x["value"] for x in lines if x["key"] == "header")
        files: dict[str, bytes] = {}
        for x in lines:
            v = x["value"]
            if x["key"] == "file":
                files[v["path"]] = base64.b64decode(v["content"])
            elif x["key"] == "lfsFile":
                if v["oid"] not in self.lfs:
                    return self._error(422, f"LFS object {v['oid']} was never uploaded")
                files[v["path"]] = self.lfs[v["oid"]]
        head = repo.branches.get(rev)
        if head is None:
            return self._error(404, "Invalid rev id", "RevisionNotFound")
        parent = header.get("parentCommit")
        if parent is not None and not head.startswith(parent):
            # Like a careless server, echo the request's Authorization header: the client must not show it.
            leak = request.headers.get("Authorization", "")
            return self._error(412, f"A commit has happened since. Please refresh and try again. ({leak})")
        c = self.commit(repo_id, rev, files, header["summary"], parent=parent or head)
        pr_url = None
        if request.args.get("create_pr"):
            repo.prs.append(c.sha)
            pr_url = f"{self.base}/{repo_id}/discussions/{len(repo.prs)}"
        else:
            repo.branches[rev] = c.sha
        return self._json({"commitUrl": f"{self.base}/{repo_id}/commit/{c.sha}", "commitOid": c.sha,
                           "pullRequestUrl": pr_url})

    def h_tree(self, request, body, repo_id, rev, sub):
        repo, err = self._repo_or_404(repo_id)
        if err:
            return err
        c = self.resolve(repo_id, rev)
        if c is None:
            return self._error(404, "Invalid rev id", "RevisionNotFound")
        out = []
        for path, data in sorted(c.files.items()):
            entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha(data)}
            if path.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            out.append(entry)
        return self._json(out)

    def h_resolve(self, request, body, repo_id, rev, path):
        repo, err = self._repo_or_404(repo_id)
        if err:
            return err
        c = self.resolve(repo_id, rev)
        if c is None:
            return self._error(404, "Invalid rev id", "RevisionNotFound")
        if path not in c.files:
            headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": c.sha}
            return self._json({"error": "Entry not found"}, 404, headers)
        data = c.files[path]
        headers = {"X-Repo-Commit": c.sha, "Content-Length": str(len(data))}
        if path.endswith(LFS_SUFFIXES):
            sha = hashlib.sha256(data).hexdigest()
            headers.update({"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))})
        else:
            headers["ETag"] = f'"{git_blob_sha(data)}"'
        # werkzeug drops the body of a HEAD answer itself, keeping Content-Length as for GET
        return Response(data, status=200, headers=headers)

    REPO = r"([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)"
    ROUTES = [
        (r"/api/repos/create", "POST", h_create),
        (rf"/api/models/{REPO}", "GET", h_info),
        (rf"/api/models/{REPO}/revision/([^/]+)", "GET", h_info),
        (rf"/api/models/{REPO}/branch/([^/]+)", "POST", h_branch),
        (r"/api/validate-yaml", "POST", h_validate_yaml),
        (rf"/api/models/{REPO}/preupload/([^/]+)", "POST", h_preupload),
        (rf"/{REPO}\.git/info/lfs/objects/batch", "POST", h_lfs_batch),
        (r"/lfs-storage/([0-9a-f]{64})", "PUT", h_lfs_put),
        (r"/lfs-verify", "POST", h_lfs_verify),
        (rf"/api/models/{REPO}/commit/([^/]+)", "POST", h_commit),
        (rf"/api/models/{REPO}/tree/([^/]+)(/.*)?", "GET", h_tree),
        (rf"/{REPO}/resolve/([^/]+)/(.+)", "GET|HEAD", h_resolve),
    ]


def serve_fake_hub(httpserver) -> FakeHub:
    """A fresh fake Hub answering every request ``httpserver`` receives."""
    fake = FakeHub(httpserver.url_for("").rstrip("/"))
    httpserver.expect_request(re.compile(".*")).respond_with_handler(fake)
    return fake


def client_env(tmp_path: Path, hub: FakeHub) -> dict[str, str]:
    """A clean client environment: private HF_HOME, the fake endpoint, a recognizable fake token."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    e.update(
        HF_HOME=str(tmp_path / "hf-home"),
        HF_ENDPOINT=hub.base,
        HF_TOKEN=TOKEN,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",
        HF_HUB_ETAG_TIMEOUT="5",
        HF_HUB_DOWNLOAD_TIMEOUT="5",
    )
    return e


def client_in_process(tmp_path: Path, monkeypatch) -> None:
    """The client inside this process: a private cache and the fake token (constants are read at import)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)


def hub_cli(env: dict[str, str], *args):
    """``bitconvert ARGS`` as a real process in ``env``."""
    return run_cli(*args, env=env)


def assert_no_token(tmp_path: Path, *procs) -> None:
    """The token is in no output and no file the tool wrote."""
    for p in procs:
        assert TOKEN not in p.stdout and TOKEN not in p.stderr
    for f in tmp_path.rglob("*"):
        if f.is_file() and not f.is_symlink():
            assert TOKEN.encode() not in f.read_bytes(), f


def hub_error_line(p) -> str:
    """The one ``error: ...`` line of a failed command, no traceback."""
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in p.stderr
    return lines[0]


def converted_for_upload(tmp_path: Path) -> Path:
    """A converted checkpoint, as users upload them: hf-packed with its provenance file."""
    from bitconvert.convert import convert

    out = tmp_path / "packed"
    convert(FIXTURES / "bitnet-2b4t-master", out, "hf-packed", hash_sources=True)
    return out


def local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def seed_repo(hub: FakeHub, repo_id: str, root: Path, extra: dict[str, bytes]) -> str:
    """A repo on the fake Hub whose main holds ``root``'s files and ``extra``; its commit sha."""
    hub.create_repo(repo_id)
    files = {**local_files(root), **extra}
    c = hub.commit(repo_id, "main", files, "seed")
    hub.repos[repo_id].branches["main"] = c.sha
    return c.sha
