"""Families are data: one more record — a renamed copy of the Llama family — and nothing else makes
pack, GGUF, Nanotron and the runtime take a checkpoint of that family, with the same bytes and the
same logits as Llama's own."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from conftest import read_all

from bitconvert.convert import convert
from bitconvert.formats import open_checkpoint
from bitconvert.formats.gguf.parser import GGUFFile
from bitconvert.model.families import FAMILIES

PROMPT = [1, 5, 9, 42, 7, 3]


def _renamed(src: Path, dst: Path, architecture: str) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["architectures"] = [architecture]
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _safetensors_equal(a: Path, b: Path) -> None:
    ta, tb = read_all(a), read_all(b)
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert ta[name].dtype == tb[name].dtype and torch.equal(ta[name], tb[name]), name


def test_a_fourth_record_is_all_it_takes(wide_checkpoint, tmp_path, monkeypatch):
    from bitconvert.runtime import load_model

    family = replace(FAMILIES["llama"], key="llama-renamed", hf_architecture="RenamedLlamaForCausalLM", model_types=())
    monkeypatch.setitem(FAMILIES, family.key, family)
    llama = wide_checkpoint["llama-master"]  # rows of 256 values, which TQ2_0 needs
    master = _renamed(llama, tmp_path / "renamed-master", family.hf_architecture)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir(), theirs.mkdir()

    # pack: the same tensors, byte for byte, and the record's class name in the config
    convert(master, ours / "packed", "hf-packed")
    convert(llama, theirs / "packed", "hf-packed")
    _safetensors_equal(ours / "packed", theirs / "packed")
    packed_cfg = json.loads((ours / "packed" / "config.json").read_text())
    assert packed_cfg["architectures"] == [family.hf_architecture]
    assert open_checkpoint(ours / "packed").config.family is family

    # GGUF: the same tensors byte for byte (Llama's Q/K order, folded scales); read back as the record
    convert(ours / "packed", ours / "m.gguf", "gguf", {"gguf_type": "tq2_0"})
    convert(theirs / "packed", theirs / "m.gguf", "gguf", {"gguf_type": "tq2_0"})
    fo, ft = GGUFFile(ours / "m.gguf"), GGUFFile(theirs / "m.gguf")
    assert list(fo.tensors) == list(ft.tensors)
    assert all(np.array_equal(fo.read_bytes(n), ft.read_bytes(n)) for n in fo.tensors)
    assert open_checkpoint(ours / "m.gguf").config.family is family

    # Nanotron (PR #178's whole Llama layout; the rope_theta it cannot hold is lost alike for both):
    # the same shards; back to HF with the record's class and the master's values
    convert(master, ours / "nt", "nanotron", {"tp": 2, "flavor": "pr178", "allow_lossy": True})
    convert(llama, theirs / "nt", "nanotron", {"tp": 2, "flavor": "pr178", "allow_lossy": True})
    shards = sorted(p.relative_to(ours / "nt") for p in (ours / "nt").rglob("*.safetensors"))
    assert shards and shards == sorted(p.relative_to(theirs / "nt") for p in (theirs / "nt").rglob("*.safetensors"))
    for rel in shards:
        assert (ours / "nt" / rel).read_bytes() == (theirs / "nt" / rel).read_bytes(), rel
    convert(ours / "nt", ours / "back", "hf-bf16")
    assert json.loads((ours / "back" / "config.json").read_text())["architectures"] == [family.hf_architecture]
    _safetensors_equal(ours / "back", master)

    # the runtime: the record's block, Llama's logits, from the master and from the GGUF
    for path, ref in ((master, llama), (ours / "m.gguf", theirs / "m.gguf")):
        model = load_model(path)
        assert model.config.family is family
        assert torch.equal(model.logits(PROMPT), load_model(ref).logits(PROMPT)), path
