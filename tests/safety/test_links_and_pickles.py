"""Files from outside SRC and pickles: a side file, shard or index entry that leads out of SRC is
refused naming both ends (for pack, convert and upload alike), the Hugging Face cache's own links
into blobs/ are followed, a checkpoint of pickles only is refused, and upload leaves pickles out
and says so unless asked (upload's dry run, with the Hub client offline)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, cli, one_line_error, read_all
from refusals import copy_fixture, expect_failure, refused, tree_digest

PACKED = FIXTURES / "bitnet-2b4t-packed"


@pytest.mark.parametrize("command", ["pack", "convert"])
def test_a_side_file_linking_out_of_src_is_refused(tmp_path, command):
    src = copy_fixture(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for upload\n")
    (src / "notes.txt").symlink_to(secret)
    extra = ("--to", "hf-bf16") if command == "convert" else ()
    line = refused(src, tmp_path, "notes.txt", str(secret.resolve()), "outside", command=command, extra=extra)
    assert "not for upload" not in line


def test_a_shard_linking_out_of_src_is_refused(tmp_path):
    src = copy_fixture(tmp_path)
    elsewhere = tmp_path / "elsewhere.safetensors"
    (src / "model.safetensors").rename(elsewhere)
    (src / "model.safetensors").symlink_to(elsewhere)
    refused(src, tmp_path, "model.safetensors", str(elsewhere.resolve()))


@pytest.mark.parametrize("entry", ["../../etc/passwd", "/etc/passwd", "sub/model.safetensors", ".."])
def test_an_index_entry_outside_src_is_refused(tmp_path, entry):
    src = copy_fixture(tmp_path, "llama-master")
    names = list(read_all(src / "model.safetensors"))
    index = {"metadata": {}, "weight_map": {n: "model.safetensors" for n in names}}
    index["weight_map"][names[3]] = entry
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    expect_failure(tmp_path, src, "model.safetensors.index.json", "outside the checkpoint")


def test_an_index_naming_an_overlong_file_is_refused(tmp_path):
    src = copy_fixture(tmp_path)
    index = {"weight_map": {"model.embed_tokens.weight": "x" * 300 + ".safetensors"}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    refused(src, tmp_path, "model.safetensors.index.json", "longer than 255 bytes")


def test_the_hf_caches_links_into_blobs_are_followed(tmp_path):
    """The Hugging Face cache's own layout: snapshot files are links into the repo's blobs/."""
    repo = tmp_path / "hub" / "models--org--name"
    snap = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted((FIXTURES / "llama-master").iterdir())):
        blob = repo / "blobs" / f"blob{i}"
        shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(Path("../../blobs") / blob.name)
    dst = tmp_path / "packed"
    proc = cli("pack", snap, dst)
    assert proc.returncode == 0, proc.stderr
    assert (dst / "tokenizer.json").read_bytes() == (FIXTURES / "llama-master" / "tokenizer.json").read_bytes()


def test_a_checkpoint_of_pickles_only_is_refused(tmp_path):
    src = copy_fixture(tmp_path, "llama-master")
    (src / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(2)}, src / "pytorch_model.bin")
    expect_failure(tmp_path, src, "pytorch_model.bin", "pickle")


@pytest.fixture
def offline(tmp_path, monkeypatch) -> None:
    """The Hub client in this process offline, with a private cache: a dry run must need neither."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))


def test_upload_refuses_a_symlink_out_of_src(tmp_path, offline):
    src = tmp_path / "packed"
    shutil.copytree(PACKED, src)
    secret = tmp_path / "token"
    secret.write_text("hf_notreallyasecretbutcouldbe\n")
    (src / "notes.txt").symlink_to(secret)
    before = tree_digest(src)
    proc = cli("upload", src, "org/name", "--dry-run")
    one_line_error(proc, 1, str(src / "notes.txt"), str(secret), "outside")
    assert "hf_notreallyasecret" not in proc.stdout
    assert tree_digest(src) == before


def test_upload_follows_the_hf_cache_links_of_a_local_snapshot(tmp_path, offline):
    # the same rule as every reader: a snapshot's files are links into the cache's blobs/
    repo = tmp_path / "hub" / "models--org--name"
    snap = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(p for p in PACKED.iterdir() if p.is_file())):
        shutil.copyfile(f, repo / "blobs" / f"blob{i}")
        (snap / f.name).symlink_to(Path("../../blobs") / f"blob{i}")
    proc = cli("upload", snap, "org/name", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    planned = {op["path"] for op in json.loads(proc.stdout)["operations"]}
    assert {p.name for p in PACKED.iterdir() if p.is_file()} <= planned


def test_upload_leaves_pickles_out_and_says_so(tmp_path, offline):
    src = tmp_path / "packed"
    shutil.copytree(PACKED, src)
    (src / "training_args.bin").write_bytes(b"\x80\x04not really a pickle")
    (src / "optimizer.pt").write_bytes(b"PK\x03\x04")
    proc = cli("upload", src, "org/name", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    paths = {op["path"] for op in plan["operations"]}
    assert "training_args.bin" not in paths and "optimizer.pt" not in paths and "model.safetensors" in paths
    assert {s["path"] for s in plan["skipped"]} == {"training_args.bin", "optimizer.pt"}
    human = cli("upload", src, "org/name", "--dry-run")
    assert "skip training_args.bin" in human.stdout and "skip optimizer.pt" in human.stdout
    asked = cli("upload", src, "org/name", "--dry-run", "--json", "--include-pickles")
    assert asked.returncode == 0, asked.stderr
    assert {"training_args.bin", "optimizer.pt"} <= {op["path"] for op in json.loads(asked.stdout)["operations"]}
