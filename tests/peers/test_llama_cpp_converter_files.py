"""A GGUF written by llama.cpp's own converter (run from the peers, unmodified but for its vocabulary,
see peer_tools.py) verifies against bitconvert's GGUF of the same master and against the master;
one flipped code fails naming the tensor, a config difference does not hide it, and its float32
metadata comes back as the shortest decimal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli
from gguf_tools import rewrite_gguf

from bitconvert.formats.gguf.parser import GGUFFile
from bitconvert.formats.gguf.stream_writer import kv_f32


@pytest.fixture(scope="module")
def llama_cpp_pair(wide_checkpoint, llama_cpp_gguf, converted) -> tuple[Path, Path, Path]:
    """(master, llama.cpp's TQ2_0 GGUF of it, bitconvert's TQ2_0 GGUF of it)."""
    master = wide_checkpoint["1bitllm-master"]
    return master, llama_cpp_gguf(master, "tq2_0"), converted(master, "gguf")


def verify_json(*args) -> tuple:
    r = cli("verify", *args, "--json")
    return r, json.loads(r.stdout)


def failed(report: dict) -> list[tuple[str, str | None]]:
    return [(c["name"], c["tensor"]) for c in report["checks"] if not c["passed"]]


def test_llama_cpps_gguf_verifies_against_ours_and_the_master(llama_cpp_pair, tmp_path):
    master, theirs, ours = llama_cpp_pair
    f = GGUFFile(theirs)
    assert f.get("general.quantized_by") is None and f.tensors["blk.0.attn_q.weight"].type_name == "TQ2_0"
    assert f.metadata["bitnet.attention.layer_norm_rms_epsilon"].value != 1e-05  # float32: 9.999999747378752e-06
    # llama.cpp's scale is fp16 (its block d): compared at that precision, everything is equal
    r, report = verify_json(theirs, "--against", ours)
    assert r.returncode == 0 and report["passed"], failed(report)
    names = {c["name"] for c in report["checks"]}
    assert {"against.config", "against.codes", "against.scale", "against.tensor"} <= names
    assert sum(c["name"] == "against.codes" for c in report["checks"]) == 14
    r, report = verify_json(theirs, "--against", master)
    assert r.returncode == 0 and report["passed"], failed(report)


def test_one_flipped_code_fails_and_a_config_difference_does_not_hide_it(llama_cpp_pair, tmp_path):
    _, theirs, ours = llama_cpp_pair
    t = GGUFFile(ours).tensors["blk.1.ffn_down.weight"]
    data = bytearray(ours.read_bytes())
    byte = data[t.offset + 100]
    low = byte & 3
    data[t.offset + 100] = (byte & ~3) | (1 if low != 1 else 0)  # one code changed (stored 0..2 -> another)
    flipped = tmp_path / "flipped.gguf"
    flipped.write_bytes(bytes(data))
    r, report = verify_json(theirs, "--against", flipped)
    assert r.returncode == 1 and failed(report) == [("against.codes", "model.layers.1.mlp.down_proj.weight")]
    codes = next(c for c in report["checks"] if c["name"] == "against.codes" and not c["passed"])
    assert codes["figure"] == 1
    # a config that differs is reported as such, and the tensors are still compared
    other = rewrite_gguf(flipped, tmp_path / "other.gguf", {"bitnet.rope.freq_base": kv_f32(20000.0)})
    r, report = verify_json(theirs, "--against", other)
    assert r.returncode == 1
    assert sorted(failed(report)) == [
        ("against.codes", "model.layers.1.mlp.down_proj.weight"),
        ("against.config", None),
    ]


def test_llama_cpps_float32_metadata_comes_back_as_the_shortest_decimal(llama_cpp_pair, tmp_path):
    master, theirs, _ = llama_cpp_pair
    out = tmp_path / "hf"
    assert cli("convert", theirs, out, "--to", "hf-packed").returncode == 0
    cfg = json.loads((out / "config.json").read_text())
    src = json.loads((master / "config.json").read_text())
    assert cfg["rms_norm_eps"] == src["rms_norm_eps"] == 1e-05 and cfg["rope_theta"] == src["rope_theta"]
    assert '"rms_norm_eps": 1e-05' in (out / "config.json").read_text()
