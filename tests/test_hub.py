"""Hub inputs and uploads, run with the real huggingface_hub client against a fake Hub on 127.0.0.1.

The fake Hub (pytest-httpserver) implements just the part of the Hub API the client uses: repo
create and info, branches, the YAML check, preupload, the git-LFS batch/upload/verify protocol,
the NDJSON commit endpoint (with the parent-commit check), tree listing and file resolve. It keeps
repositories as in-memory commits, so tests can assert what was committed, byte for byte.

The fake speaks git-LFS, not Xet, so the client runs with HF_HUB_DISABLE_XET=1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, read_all, run_cli
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from werkzeug.wrappers import Request, Response

TOKEN = "hf_bitconvertFAKEtoken0123456789secret"
LFS_SUFFIXES = (".safetensors", ".gguf", ".bin")
INITIAL_ATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()


# --- the fake Hub -------------------------------------------------------------------------------


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


@pytest.fixture
def hub(httpserver):
    fake = FakeHub(httpserver.url_for("").rstrip("/"))
    httpserver.expect_request(re.compile(".*")).respond_with_handler(fake)
    return fake


@pytest.fixture
def env(tmp_path, hub):
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


@pytest.fixture
def inproc(tmp_path, monkeypatch):
    """The client inside this process: a private cache and the fake token (constants are read at import)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)


def cli(env, *args):
    return run_cli(*args, env=env)


def assert_no_token(tmp_path: Path, *procs) -> None:
    """The token is in no output and no file the tool wrote."""
    for p in procs:
        assert TOKEN not in p.stdout and TOKEN not in p.stderr
    for f in tmp_path.rglob("*"):
        if f.is_file() and not f.is_symlink():
            assert TOKEN.encode() not in f.read_bytes(), f


def one_line_error(p) -> str:
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in p.stderr
    return lines[0]


@pytest.fixture
def packed(tmp_path) -> Path:
    """A converted checkpoint, as users upload them: hf-packed with its provenance file."""
    from bitconvert.convert import convert

    out = tmp_path / "packed"
    convert(FIXTURES / "bitnet-2b4t-master", out, "hf-packed", hash_sources=True)
    return out


def local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- hf:// addresses ------------------------------------------------------------------------------


def test_parse_hf_uri():
    from bitconvert.errors import UsageError
    from bitconvert.hub.source import HubRef, parse_hf_uri

    assert parse_hf_uri("hf://org/name") == HubRef("org/name")
    assert parse_hf_uri(Path("hf://org/name@dev")) == HubRef("org/name", "dev")  # pathlib folds the //
    assert parse_hf_uri("hf://org/na.me-1@refs%2Fpr%2F3/sub/f.gguf") == HubRef("org/na.me-1", "refs/pr/3", "sub/f.gguf")
    assert str(HubRef("org/name", "refs/pr/3", "x.gguf")) == "hf://org/name@refs%2Fpr%2F3/x.gguf"
    bad_uris = ("hf://org", "hf://org/", "hf://org/name@", "hf://org/name/../x", "hf://datasets/org/n", "hf://o/n--x")
    for bad in bad_uris:
        with pytest.raises(UsageError):
            parse_hf_uri(bad)


def test_layout_selection_skips_pickles_and_other_formats():
    from bitconvert.hub.errors import HubError
    from bitconvert.hub.source import HubRef, _layout_files

    ref = HubRef("org/name")
    repo = ["config.json", "model.safetensors", "pytorch_model.bin", "README.md", "tokenizer.json", "LICENSE",
            "onnx/model.onnx", "ggml-model-i2_s.gguf", "original/consolidated.safetensors", ".gitattributes"]
    assert _layout_files(repo, "", ref) == ("hf", ["LICENSE", "config.json", "model.safetensors", "tokenizer.json"])
    sharded = ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"]
    assert _layout_files(sharded, "", ref) == ("hf-index", ["config.json", "model.safetensors.index.json"])
    assert _layout_files(["a.gguf", "README.md"], "", ref) == ("gguf", ["a.gguf"])
    with pytest.raises(HubError, match="several GGUF files"):
        _layout_files(["a.gguf", "b.gguf"], "", ref)
    with pytest.raises(HubError, match="only pickle weights"):
        _layout_files(["config.json", "pytorch_model.bin"], "", ref)
    with pytest.raises(HubError, match="no checkpoint"):
        _layout_files(["README.md"], "", ref)


# --- uploads --------------------------------------------------------------------------------------


def test_upload_makes_one_commit_with_files_and_card(tmp_path, hub, env, packed):
    p = cli(env, "upload", packed, "org/tiny", "--json")
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)

    # exactly one commit, on top of the repo's initial commit, holding every file plus the card
    commits = hub.calls("POST", r"/api/models/org/tiny/commit/main$")
    assert len(commits) == 1 and len(hub.commit_payloads) == 1
    assert hub.calls("POST", r"/api/repos/create$") and result["created_repo"] is True
    head = hub.head("org/tiny")
    assert result["commit"] == head.sha and result["parent_commit"] == head.parent
    assert hub.repos["org/tiny"].commits[head.parent].summary == "initial commit"
    local = local_files(packed)
    assert "bitconvert_provenance.json" in local and "README.md" not in local
    assert set(head.files) == set(local) | {"README.md", ".gitattributes"}
    for name, data in local.items():
        assert head.files[name] == data, name

    # the NDJSON payload the client sent: header with parentCommit, weights by LFS oid, the rest inline
    lines = hub.commit_payloads[0]
    header = lines[0]
    assert header["key"] == "header" and header["value"]["parentCommit"] == head.parent
    assert header["value"]["summary"].startswith("Upload hf-packed")
    by_path = {x["value"]["path"]: x for x in lines[1:]}
    assert set(by_path) == set(local) | {"README.md"}
    st = by_path["model.safetensors"]
    assert st["key"] == "lfsFile" and st["value"]["oid"] == hashlib.sha256(local["model.safetensors"]).hexdigest()
    assert by_path["config.json"]["key"] == "file"
    # the LFS object went up through batch + PUT + verify, before the commit
    assert len(hub.calls("POST", r"lfs/objects/batch$")) == 1
    assert len(hub.calls("PUT", r"^/lfs-storage/")) == 1 and len(hub.calls("POST", r"^/lfs-verify$")) == 1
    preupload = json.loads(hub.calls("POST", r"/preupload/main$")[0]["body"])
    assert sorted(f["path"] for f in preupload["files"]) == sorted(by_path)

    # the card parses as the Hub parses it, and carries the provenance of the conversion
    card = ModelCard(head.files["README.md"].decode())
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert card.data.tags == ["bitnet", "1.58-bit", "hf-packed"]
    prov = json.loads(local["bitconvert_provenance.json"])
    src_sha = next(f["sha256"] for f in prov["source_files"] if f["path"] == "model.safetensors")
    assert src_sha == hashlib.sha256((FIXTURES / "bitnet-2b4t-master" / "model.safetensors").read_bytes()).hexdigest()
    assert src_sha in card.text and "bitconvert" in card.text and "AutoModelForCausalLM" in card.text

    # the token authenticated the API calls, and appears nowhere it should not
    assert hub.calls("POST", r"/commit/main$")[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert all(TOKEN.encode() not in r["body"] for r in hub.requests)
    assert_no_token(tmp_path, p)


def test_second_upload_with_stale_parent_fails_cleanly(tmp_path, hub, env, packed):
    first = cli(env, "upload", packed, "org/race")
    assert first.returncode == 0, first.stderr
    before = hub.head("org/race")

    # Another writer pushes after our client read the branch head, before our commit arrives.
    hub.on_preupload = lambda: hub.repos["org/race"].branches.update(
        main=hub.commit("org/race", "main", {"other.txt": b"someone else"}, "concurrent push").sha
    )
    card = tmp_path / "card.md"
    card.write_text("---\nlicense: mit\ntags: [bitnet]\n---\n# second\n")
    second = cli(env, "upload", packed, "org/race", "--card", card, "--commit-message", "second")
    assert second.returncode == 1
    line = one_line_error(second)
    assert "org/race@main" in line and "nothing was committed" in line
    # the Hub kept the concurrent commit; ours was refused, not merged over it
    head = hub.head("org/race")
    assert head.summary == "concurrent push" and head.parent == before.sha
    assert hub.commit_payloads[-1][0]["value"]["parentCommit"] == before.sha
    assert not any(c.summary == "second" for c in hub.repos["org/race"].commits.values())
    assert head.files["README.md"] == before.files["README.md"]  # the first upload's generated card
    assert_no_token(tmp_path, first, second)  # the 412 body echoed the Authorization header


def test_dry_run_sends_nothing(tmp_path, hub, env, packed):
    p = cli(env, "upload", packed, "org/dry", "--dry-run", "--json")
    assert p.returncode == 0, p.stderr
    assert hub.requests == []
    plan = json.loads(p.stdout)
    ops = {o["path"]: o for o in plan["operations"]}
    local = local_files(packed)
    assert set(ops) == set(local) | {"README.md"}
    for name, data in local.items():
        assert ops[name]["size"] == len(data) and ops[name]["sha256"] == hashlib.sha256(data).hexdigest()
    card = plan["card"].encode()
    assert ops["README.md"]["sha256"] == hashlib.sha256(card).hexdigest() and plan["card_origin"] == "card generated"
    assert ModelCard(plan["card"]).data.tags == ["bitnet", "1.58-bit", "hf-packed"]
    assert plan["verify"]["passed"] is True

    human = cli(env, "upload", packed, "org/dry", "--dry-run")
    assert human.returncode == 0 and hub.requests == []
    assert ops["model.safetensors"]["sha256"] in human.stdout and "nothing was sent" in human.stdout
    assert_no_token(tmp_path, p, human)


def test_card_kept_or_replaced(tmp_path, packed):
    from bitconvert.publish.upload import plan_upload

    (packed / "README.md").write_text("---\nlicense: apache-2.0\n---\n# my own card\n")
    kept = plan_upload(packed, "org/c").to_dict()
    assert kept["card_origin"] == "card kept" and "my own card" in kept["card"]
    assert [o["origin"] for o in kept["operations"] if o["path"] == "README.md"] == ["card kept"]
    other = tmp_path / "other.md"
    other.write_text("---\nlicense: mit\n---\n# replacement\n")
    replaced = plan_upload(packed, "org/c", card_file=other).to_dict()
    assert "replacement" in replaced["card"] and sum(o["path"] == "README.md" for o in replaced["operations"]) == 1
    readme = next(o for o in replaced["operations"] if o["path"] == "README.md")
    assert readme["sha256"] == hashlib.sha256(other.read_bytes()).hexdigest()

    from bitconvert.errors import CheckpointError

    broken = tmp_path / "broken.md"
    broken.write_text("---\nlicense: [mit\n---\n# card\n")
    with pytest.raises(CheckpointError, match=r"broken\.md: the model card's metadata block does not parse"):
        plan_upload(packed, "org/c", card_file=broken)


def test_failing_verify_sends_nothing(tmp_path, hub, env):
    bad = tmp_path / "bad"
    bad.mkdir()
    src = FIXTURES / "bitnet-2b4t-master"
    for f in src.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    tensors = load_file(str(bad / "model.safetensors"))
    tensors["model.norm.weight"] = torch.full_like(tensors["model.norm.weight"], float("nan"))
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})

    p = cli(env, "upload", bad, "org/bad")
    assert p.returncode == 1
    line = one_line_error(p)
    assert "integrity" in line and "nothing was uploaded" in line and "model.norm.weight" in line
    from bitconvert.errors import CheckpointError
    from bitconvert.publish.upload import plan_upload

    with pytest.raises(CheckpointError, match="integrity"):
        plan_upload(bad, "org/bad")  # what --dry-run runs
    assert hub.requests == []
    assert_no_token(tmp_path, p)


def test_upload_to_new_branch_and_as_pull_request(tmp_path, hub, env, packed):
    p = cli(env, "upload", packed, "org/br", "--revision", "dev", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["revision"] == "dev" and r["created_branch"] is True
    repo = hub.repos["org/br"]
    assert repo.branches["dev"] == r["commit"] and "README.md" not in hub.head("org/br", "main").files

    pr = cli(env, "upload", packed, "org/br", "--create-pr", "--commit-message", "as a PR", "--json")
    assert pr.returncode == 0, pr.stderr
    r2 = json.loads(pr.stdout)
    assert r2["pr_url"].endswith("/org/br/discussions/1") and repo.prs == [r2["commit"]]
    assert hub.calls("POST", r"/commit/main$")[-1]["query"].get("create_pr") == "1"
    assert "README.md" not in hub.head("org/br", "main").files  # a PR does not move main
    assert_no_token(tmp_path, p, pr)


# --- hf:// inputs ---------------------------------------------------------------------------------


def seed_repo(hub: FakeHub, repo_id: str, root: Path, extra: dict[str, bytes]) -> str:
    hub.create_repo(repo_id)
    files = {**local_files(root), **extra}
    c = hub.commit(repo_id, "main", files, "seed")
    hub.repos[repo_id].branches["main"] = c.sha
    return c.sha


def test_hf_input_downloads_only_what_the_format_needs_then_works_offline(tmp_path, hub, env):
    src = FIXTURES / "llama-packed"
    extra = {
        "pytorch_model.bin": b"not a pickle you want",
        "other.gguf": b"GGUF" + b"\0" * 60,
        "README.md": b"---\nlicense: apache-2.0\n---\n# upstream card\n",
        "onnx/model.safetensors": b"\0" * 16,
    }
    sha = seed_repo(hub, "org/src", src, extra)

    online = cli(env, "inspect", "hf://org/src", "--json", "--no-stats")
    assert online.returncode == 0, online.stderr
    fetched = {r["path"].split("/resolve/", 1)[1].split("/", 1)[1] for r in hub.requests if "/resolve/" in r["path"]}
    assert fetched == set(local_files(src))  # no pickle, no gguf, no card, nothing from subfolders

    hub.requests.clear()
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "from-cache"
    p = cli(offline, "convert", "hf://org/src", out, "--to", "hf-bf16", "--json")
    assert p.returncode == 0, p.stderr
    assert hub.requests == []  # served from the cache alone
    assert json.loads(p.stdout)["src"] == "hf://org/src"
    prov = json.loads((out / "bitconvert_provenance.json").read_text())
    assert prov["source"]["commit"] == sha and prov["source"]["repo_id"] == "org/src"
    assert prov["source"]["resolved_from_cache_only"] is True and prov["base_model"] == "org/src"
    assert {f["path"] for f in prov["source_files"]} == set(local_files(src))

    # bit-identical to converting the local copy
    from bitconvert.convert import convert

    ref = tmp_path / "from-local"
    convert(src, ref, "hf-bf16")
    a, b = read_all(out), read_all(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # pinned to the commit sha works offline too; an unknown revision fails in one line, still offline
    pinned = cli(offline, "inspect", f"hf://org/src@{sha}", "--json", "--no-stats")
    assert pinned.returncode == 0, pinned.stderr
    missing = cli(offline, "inspect", "hf://org/src@nope", "--no-stats")
    assert missing.returncode == 1 and "not in the local cache" in one_line_error(missing)

    # every command that reads a checkpoint takes hf:// as SRC and for --against
    checks = {
        "verify": cli(offline, "verify", "hf://org/src", "--against", src, "--logits", "--json"),
        "verify --against": cli(offline, "verify", src, "--against", "hf://org/src", "--json"),
        "logits": cli(offline, "logits", "hf://org/src", "--tokens", "1,2,3", "--out", tmp_path / "l.npy", "--json"),
    }
    for what, run in checks.items():
        assert run.returncode == 0, (what, run.stderr)
    assert json.loads(checks["verify"].stdout)["passed"] is True
    assert hub.requests == []
    assert_no_token(tmp_path, online, p, pinned, missing, *checks.values())


def test_convert_hf_input_push_to(tmp_path, hub, env):
    """convert hf://... --push-to: download, convert, upload; the card names the base model and its commit."""
    upstream_card = {"README.md": b"---\nlicense: mit\n---\n# base\n"}
    sha = seed_repo(hub, "org/base", FIXTURES / "bitnet-2b4t-master", upstream_card)
    out = tmp_path / "conv"
    p = cli(env, "convert", "hf://org/base", out, "--to", "hf-packed", "--push-to", "org/derived", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)  # one JSON object: the conversion and its upload
    assert d["src"] == "hf://org/base" and "bitconvert_provenance.json" in d["files"]
    head = hub.head("org/derived")
    assert d["upload"]["commit"] == head.sha and len(hub.commit_payloads) == 1
    for name, data in local_files(out).items():
        assert head.files[name] == data
    card = ModelCard(head.files["README.md"].decode())
    assert card.data.base_model == "org/base" and card.data.license == "mit"
    assert sha in card.text and "bitconvert convert hf://org/base" in card.text

    never = tmp_path / "never"
    bad = cli(env, "convert", FIXTURES / "llama-master", never, "--to", "hf-packed", "--push-to", "not a repo")
    assert bad.returncode == 2 and not never.exists()
    one_line_error(bad)
    assert_no_token(tmp_path, p, bad)


def test_gguf_from_hub_names_its_origin_and_carries_provenance(tmp_path, hub, env):
    """A GGUF made from hf:// is named after the repo, points at it, and keeps its provenance in the
    header (read here with gguf-py); upload's card is made from that header."""
    import gguf

    src = FIXTURES / "bitnet-2b4t-packed"
    sha = seed_repo(hub, "org/tiny-bitnet", src, {"README.md": b"---\nlicense: mit\n---\n# card\n"})
    out = tmp_path / "tiny.gguf"
    p = cli(env, "convert", "hf://org/tiny-bitnet", out, "--to", "gguf", "--allow-fallback", "--json")
    assert p.returncode == 0, p.stderr
    reader = gguf.GGUFReader(out)

    def text(key):
        field = reader.fields[key]
        return bytes(field.parts[field.data[0]]).decode()

    assert text("general.name") == "tiny-bitnet"
    assert text("general.source.url") == text("general.source.repo_url") == "https://huggingface.co/org/tiny-bitnet"
    assert text("general.license") == "mit"
    prov = json.loads(text("bitconvert.provenance"))
    assert prov["source"]["commit"] == sha and prov["base_model"] == "org/tiny-bitnet"
    assert prov["output"] == {"format": "gguf", "files": ["tiny.gguf"]}
    blobs = {f["path"]: f["sha256"] for f in prov["source_files"]}
    assert blobs["model.safetensors"] == hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()

    plan = cli(env, "upload", out, "org/tiny-gguf", "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    card = json.loads(plan.stdout)["card"]
    assert sha in card and "base_model: org/tiny-bitnet" in card and blobs["model.safetensors"] in card

    # a local source: named after its folder, no URL, hashes not recorded rather than guessed
    local = tmp_path / "local.gguf"
    assert cli(env, "convert", src, local, "--to", "gguf", "--allow-fallback").returncode == 0
    lreader = gguf.GGUFReader(local)
    field = lreader.fields["general.name"]
    assert bytes(field.parts[field.data[0]]).decode() == "bitnet-2b4t-packed"
    assert "general.source.url" not in lreader.fields
    field = lreader.fields["bitconvert.provenance"]
    lprov = json.loads(bytes(field.parts[field.data[0]]).decode())
    assert lprov["source"]["path"] == str(src) and all(f["sha256"] is None for f in lprov["source_files"])
    assert_no_token(tmp_path, p, plan)


def test_missing_repo_and_unreachable_hub_are_one_line_errors(tmp_path, hub, env, packed, inproc):
    from bitconvert.hub.errors import HubError
    from bitconvert.hub.source import resolve_source

    with pytest.raises(HubError, match=r"^hf://org/absent: repository not found"):
        resolve_source("hf://org/absent", endpoint=hub.base)
    down = {**env, "HF_ENDPOINT": "http://127.0.0.1:9"}
    q = cli(down, "upload", packed, "org/x")
    assert q.returncode == 1 and "cannot reach the Hub" in one_line_error(q)
    assert_no_token(tmp_path, q)


# --- model card -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,arch,lib", [
    ("hf-packed", "bitnet-b1.58", "transformers"),
    ("hf-bf16", "llama", "transformers"),
    ("gguf-tq2_0", "bitnet-b1.58", "gguf"),
    ("gguf-i2_s", "bitnet-b1.58", "gguf"),
    ("nanotron", "llama", "nanotron"),
])
def test_card_front_matter_parses_with_huggingface_hub(fmt, arch, lib):
    from bitconvert.publish.card import CardInput, render_card

    prov = {"base_model": "microsoft/bitnet-b1.58-2B-4T", "license": "mit", "command": "bitconvert convert a b",
            "bitconvert_version": "0.1.0",
            "source": {"repo_id": "microsoft/bitnet-b1.58-2B-4T", "revision": "main", "commit": "c" * 40,
                       "format": "hf-packed"},
            "source_files": [{"path": "model.safetensors", "size": 3, "sha256": "a" * 64}]}
    text = render_card(CardInput("me/out", fmt, arch, ["model.gguf" if "gguf" in fmt else "model.safetensors"], prov))
    data = ModelCard(text).data
    assert data.library_name == lib and data.tags == ["bitnet", "1.58-bit", fmt]
    assert data.base_model == "microsoft/bitnet-b1.58-2B-4T" and data.license == "mit"
    assert data.pipeline_tag == "text-generation"
    assert "c" * 40 in text and "a" * 64 in text and "`bitconvert convert a b`" in text
    if fmt == "gguf-i2_s":
        assert "bitnet.cpp" in text
    elif "gguf" in fmt:
        assert "llama-cli" in text and "relu²" in text

    bare = ModelCard(render_card(CardInput("me/out", fmt, arch))).data
    assert bare.base_model is None and bare.license is None and "1.58-bit" in bare.tags


def test_sharded_and_single_file_selection(tmp_path, hub, inproc):
    """An index pulls exactly its shards (a stray top-level safetensors stays on the Hub); a path picks one file."""
    from bitconvert.convert import convert
    from bitconvert.formats import open_checkpoint
    from bitconvert.hub.errors import HubError
    from bitconvert.hub.source import resolve_source

    sharded = tmp_path / "sharded"
    convert(FIXTURES / "llama-packed", sharded, "hf-packed", {"max_shard_size": 20_000})
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    strays = {"consolidated.safetensors": b"\0" * 64, "a.gguf": b"GGUF", "b.gguf": b"GGUF"}
    sha = seed_repo(hub, "org/sharded", sharded, strays)

    got = resolve_source("hf://org/sharded", endpoint=hub.base)
    assert got.commit == sha and got.repo_id == "org/sharded"
    fetched = {r["path"].rsplit(f"/resolve/{sha}/", 1)[1] for r in hub.calls("GET", "/resolve/")}
    assert fetched == set(local_files(sharded))  # index, its shards, side files; not consolidated, no gguf
    assert sorted(got.files) == sorted(local_files(sharded))

    one = resolve_source("hf://org/sharded/b.gguf", endpoint=hub.base)
    assert one.path.name == "b.gguf" and one.path.read_bytes() == b"GGUF" and one.files == ["b.gguf"]
    with pytest.raises(HubError, match="no file or folder 'nope'"):
        resolve_source("hf://org/sharded/nope", endpoint=hub.base)

    # a repository holding one GGUF file resolves to that file, whatever else sits beside it
    gdir = tmp_path / "g"
    gdir.mkdir()
    convert(FIXTURES / "llama-packed", gdir / "m.gguf", "gguf", {"allow_fallback": True})
    seed_repo(hub, "org/g", gdir, {"README.md": b"# card\n", "pytorch_model.bin": b"pickle", "sub/x.gguf": b"GGUF"})
    g = resolve_source("hf://org/g", endpoint=hub.base)
    assert g.path.name == "m.gguf" and g.path.read_bytes() == (gdir / "m.gguf").read_bytes() and g.files == ["m.gguf"]
    assert open_checkpoint(g.path).format == "gguf"

    # Re-hosting an hf:// source uploads its selection, not b.gguf now sitting in the same cached snapshot.
    from bitconvert.publish.upload import plan_upload

    assert (got.path / "b.gguf").is_file()
    plan = plan_upload("hf://org/sharded", "org/copy", endpoint=hub.base)
    assert {f.path_in_repo for f in plan.files} == set(local_files(sharded)) | {"README.md"}
    assert ModelCard(plan.card).data.base_model == "org/sharded"


@pytest.mark.parametrize("to", ["hf-packed", "gguf"])
def test_source_hashes_are_recorded_only_when_asked(tmp_path, to):
    """A local source's sha256 costs a second full read: recorded with --hash-sources, else null
    (never guessed), for directory and single-file outputs alike."""
    src = FIXTURES / "bitnet-2b4t-master"
    want = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in src.iterdir() if p.is_file() and not p.name.startswith(".")
    }

    def recorded(*extra: str) -> dict:
        dst = tmp_path / f"{to}-{len(extra)}{'.gguf' if to == 'gguf' else ''}"
        fallback = ["--allow-fallback"] if to == "gguf" else []  # the tiny fixture's rows are not 256-aligned
        p = run_cli("convert", src, dst, "--to", to, *fallback, *extra)
        assert p.returncode == 0, p.stderr
        if to == "gguf":
            import gguf

            field = gguf.GGUFReader(dst).fields["bitconvert.provenance"]
            prov = json.loads(bytes(field.parts[field.data[0]]).decode())
        else:
            prov = json.loads((dst / "bitconvert_provenance.json").read_text())
        return {f["path"]: f["sha256"] for f in prov["source_files"]}

    assert recorded() == dict.fromkeys(want)
    assert recorded("--hash-sources") == want
