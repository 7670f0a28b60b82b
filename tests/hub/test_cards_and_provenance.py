"""Model cards and provenance: the card's front matter parses as huggingface_hub parses it (library,
tags, base model, license; what to run the file with), and a local source's sha256 is recorded only
with --hash-sources (never guessed), in directory and GGUF outputs alike."""

from __future__ import annotations

import hashlib
import json

import gguf
import pytest
from conftest import FIXTURES, cli
from huggingface_hub import ModelCard


@pytest.mark.parametrize("fmt,arch,lib", [
    ("hf-packed", "bitnet-b1.58", "transformers"),
    ("hf-bf16", "llama", "transformers"),
    ("gguf-tq2_0", "bitnet-b1.58", "gguf"),
    ("gguf-i2_s", "bitnet-b1.58", "gguf"),
    ("nanotron", "llama", "nanotron"),
])
def test_the_cards_front_matter_parses_with_huggingface_hub(fmt, arch, lib):
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
        p = cli("convert", src, dst, "--to", to, *fallback, *extra)
        assert p.returncode == 0, p.stderr
        if to == "gguf":
            field = gguf.GGUFReader(dst).fields["bitconvert.provenance"]
            prov = json.loads(bytes(field.parts[field.data[0]]).decode())
        else:
            prov = json.loads((dst / "bitconvert_provenance.json").read_text())
        return {f["path"]: f["sha256"] for f in prov["source_files"]}

    assert recorded() == dict.fromkeys(want)
    assert recorded("--hash-sources") == want
