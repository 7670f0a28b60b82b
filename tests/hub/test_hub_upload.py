"""``upload`` and ``convert --push-to``, with the real huggingface_hub client against a fake Hub: one
commit holding every file and a model card (weights through git-LFS, the rest inline, the token
sent only where it belongs and shown nowhere), refused cleanly when someone pushed meanwhile, a
dry run that sends nothing, a card kept or replaced, nothing sent when verify fails, new branches
and pull requests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES
from fake_hub import (
    TOKEN,
    FakeHub,
    assert_no_token,
    client_env,
    client_in_process,
    converted_for_upload,
    hub_cli,
    hub_error_line,
    local_files,
    seed_repo,
    serve_fake_hub,
)
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file


@pytest.fixture
def hub(httpserver) -> FakeHub:
    return serve_fake_hub(httpserver)


@pytest.fixture
def env(tmp_path, hub) -> dict[str, str]:
    return client_env(tmp_path, hub)


@pytest.fixture
def inproc(tmp_path, monkeypatch) -> None:
    client_in_process(tmp_path, monkeypatch)


@pytest.fixture
def packed(tmp_path) -> Path:
    return converted_for_upload(tmp_path)


def test_upload_makes_one_commit_with_files_and_card(tmp_path, hub, env, packed):
    p = hub_cli(env, "upload", packed, "org/tiny", "--json")
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
    first = hub_cli(env, "upload", packed, "org/race")
    assert first.returncode == 0, first.stderr
    before = hub.head("org/race")

    # Another writer pushes after our client read the branch head, before our commit arrives.
    hub.on_preupload = lambda: hub.repos["org/race"].branches.update(
        main=hub.commit("org/race", "main", {"other.txt": b"someone else"}, "concurrent push").sha
    )
    card = tmp_path / "card.md"
    card.write_text("---\nlicense: mit\ntags: [bitnet]\n---\n# second\n")
    second = hub_cli(env, "upload", packed, "org/race", "--card", card, "--commit-message", "second")
    assert second.returncode == 1
    line = hub_error_line(second)
    assert "org/race@main" in line and "nothing was committed" in line
    # the Hub kept the concurrent commit; ours was refused, not merged over it
    head = hub.head("org/race")
    assert head.summary == "concurrent push" and head.parent == before.sha
    assert hub.commit_payloads[-1][0]["value"]["parentCommit"] == before.sha
    assert not any(c.summary == "second" for c in hub.repos["org/race"].commits.values())
    assert head.files["README.md"] == before.files["README.md"]  # the first upload's generated card
    assert_no_token(tmp_path, first, second)  # the 412 body echoed the Authorization header


def test_dry_run_sends_nothing(tmp_path, hub, env, packed):
    p = hub_cli(env, "upload", packed, "org/dry", "--dry-run", "--json")
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

    human = hub_cli(env, "upload", packed, "org/dry", "--dry-run")
    assert human.returncode == 0 and hub.requests == []
    assert ops["model.safetensors"]["sha256"] in human.stdout and "nothing was sent" in human.stdout
    assert_no_token(tmp_path, p, human)


def test_a_card_in_src_is_kept_or_replaced_when_asked(tmp_path, packed):
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

    p = hub_cli(env, "upload", bad, "org/bad")
    assert p.returncode == 1
    line = hub_error_line(p)
    assert "integrity" in line and "nothing was uploaded" in line and "model.norm.weight" in line
    from bitconvert.errors import CheckpointError
    from bitconvert.publish.upload import plan_upload

    with pytest.raises(CheckpointError, match="integrity"):
        plan_upload(bad, "org/bad")  # what --dry-run runs
    assert hub.requests == []
    assert_no_token(tmp_path, p)


def test_upload_to_new_branch_and_as_pull_request(tmp_path, hub, env, packed):
    p = hub_cli(env, "upload", packed, "org/br", "--revision", "dev", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["revision"] == "dev" and r["created_branch"] is True
    repo = hub.repos["org/br"]
    assert repo.branches["dev"] == r["commit"] and "README.md" not in hub.head("org/br", "main").files

    pr = hub_cli(env, "upload", packed, "org/br", "--create-pr", "--commit-message", "as a PR", "--json")
    assert pr.returncode == 0, pr.stderr
    r2 = json.loads(pr.stdout)
    assert r2["pr_url"].endswith("/org/br/discussions/1") and repo.prs == [r2["commit"]]
    assert hub.calls("POST", r"/commit/main$")[-1]["query"].get("create_pr") == "1"
    assert "README.md" not in hub.head("org/br", "main").files  # a PR does not move main
    assert_no_token(tmp_path, p, pr)


def test_convert_from_hf_with_push_to_downloads_converts_and_uploads(tmp_path, hub, env):
    """convert hf://... --push-to: download, convert, upload; the card names the base model and its commit."""
    upstream_card = {"README.md": b"---\nlicense: mit\n---\n# base\n"}
    sha = seed_repo(hub, "org/base", FIXTURES / "bitnet-2b4t-master", upstream_card)
    out = tmp_path / "conv"
    p = hub_cli(env, "convert", "hf://org/base", out, "--to", "hf-packed", "--push-to", "org/derived", "--json")
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
    bad = hub_cli(env, "convert", FIXTURES / "llama-master", never, "--to", "hf-packed", "--push-to", "not a repo")
    assert bad.returncode == 2 and not never.exists()
    hub_error_line(bad)
    assert_no_token(tmp_path, p, bad)
