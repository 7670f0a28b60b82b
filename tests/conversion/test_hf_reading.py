"""Reading HF checkpoints: each safetensors header parsed once, a config that repeats a key read as JSON
readers do (the last wins, with a note), and ``inspect --json`` saying format, family, ternary
tensors, code fractions and scales."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FIXTURES, cli

from bitconvert.formats import open_checkpoint
from bitconvert.io.safetensors import SafetensorsFile


@pytest.mark.parametrize("fixture", ["llama-packed", "bitnet-2b4t-master"])
def test_opening_an_hf_directory_parses_each_header_once(fixture, monkeypatch):
    parsed: list[Path] = []
    real = SafetensorsFile.__init__

    def counting(self, path, *a, **k):
        parsed.append(Path(path))
        real(self, path, *a, **k)

    monkeypatch.setattr(SafetensorsFile, "__init__", counting)
    ckpt = open_checkpoint(FIXTURES / fixture)
    files = sorted(p.name for p in (FIXTURES / fixture).glob("*.safetensors"))
    assert sorted(p.name for p in parsed) == files
    assert ckpt.format == ("hf-packed" if fixture.endswith("packed") else "hf-bf16")


def test_a_config_that_repeats_a_key_reads_as_json_readers_do(tmp_path):
    text = (FIXTURES / "llama-packed" / "config.json").read_text()
    assert text.count('"quantization_config"') == 2
    r = cli("inspect", FIXTURES / "llama-packed", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["config"]["quantization"]["linear_class"] == "bitlinear"
    assert any("more than once" in n for n in info["notes"])


def test_inspect_json_names_format_family_codes_and_scales(fixture_dir):
    r = cli("inspect", fixture_dir, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format"] == ("hf-packed" if fixture_dir.name.endswith("packed") else "hf-bf16")
    assert info["ternary_tensors"] == 14
    arch = {"bitnet-2b4t": "bitnet-b1.58", "1bitllm": "1bitllm", "llama": "llama"}[fixture_dir.name.rsplit("-", 1)[0]]
    assert info["architecture"] == arch
    if fixture_dir.name.endswith("packed"):
        row = next(r for r in info["tensors"] if r["name"].endswith("q_proj.weight"))
        assert abs(sum(row["codes"].values()) - 1) < 1e-6 and row["scale"]["value"] > 0
