"""Damaged HF checkpoints: a truncated file, a 2-bit code 3, a shape or dtype the config does not
allow, rows that cannot be packed, a malformed header, non-finite or F16-overflowing weights, float
values of an unknown kind: each is one stderr line naming the file and tensor (and where in it),
exit 1, nothing written, and the input never touched."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, cli, read_all
from refusals import copy_fixture, expect_failure, refused
from safetensors.torch import load_file, save_file

from bitconvert.convert import convert
from bitconvert.errors import CheckpointError


def test_a_truncated_file_is_refused(tmp_path):
    src = copy_fixture(tmp_path, "bitnet-2b4t-packed")
    f = src / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    expect_failure(tmp_path, src, "model.safetensors", "truncated")


def test_a_code_3_is_refused_naming_row_and_column(tmp_path):
    src = copy_fixture(tmp_path, "bitnet-2b4t-packed")
    tensors = read_all(src / "model.safetensors")
    name = "model.layers.1.mlp.gate_proj.weight"
    tensors[name][3, 5] |= 0b11
    from safetensors.torch import save_file

    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    expect_failure(tmp_path, src, name, "code 3", "row 3, column 5")


def test_a_shape_the_config_does_not_allow_is_refused(tmp_path):
    src = copy_fixture(tmp_path, "llama-master")
    cfg = json.loads((src / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (src / "config.json").write_text(json.dumps(cfg))
    expect_failure(tmp_path, src, "model.layers.0.mlp.gate_proj.weight", "does not match the config")


def test_rows_that_cannot_be_packed_are_refused(tmp_path):
    src = tmp_path / "odd"
    from fixtures.make_fixtures import make_checkpoint

    make_checkpoint(src, "llama", "master", hidden=64, intermediate=126, heads=4, kv_heads=2)
    expect_failure(tmp_path, src, "gate_proj.weight", "not a multiple of 4")


def test_a_malformed_header_is_refused(tmp_path):
    src = copy_fixture(tmp_path, "llama-master")
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + data[8:])
    expect_failure(tmp_path, src, "model.safetensors", "header length")


def test_a_dtype_a_master_cannot_hold_is_refused(tmp_path):
    src = copy_fixture(tmp_path, "llama-master")
    tensors = read_all(src / "model.safetensors")
    tensors["model.norm.weight"] = tensors["model.norm.weight"].to(torch.int32)
    from safetensors.torch import save_file

    save_file(tensors, str(src / "model.safetensors"))
    expect_failure(tmp_path, src, "model.norm.weight", "I32")


def poke_bf16(path: Path, tensor: str, flat_index: int, value: float) -> None:
    """Overwrite one bf16 element of ``tensor`` in place (the top half of its float32 bits)."""
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    entry = json.loads(raw[8 : 8 + n])[tensor]
    assert entry["dtype"] == "BF16"
    at = 8 + n + entry["data_offsets"][0] + 2 * flat_index
    raw[at : at + 2] = struct.pack("<f", value)[2:]
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_master_weight_is_refused_naming_where(tmp_path, value):
    src = copy_fixture(tmp_path)
    name = "model.layers.1.mlp.down_proj.weight"
    cols = json.loads((src / "config.json").read_text())["intermediate_size"]
    poke_bf16(src / "model.safetensors", name, 2 * cols + 5, value)
    line = refused(src, tmp_path, name, "non-finite value", "index [2, 5]")
    assert str(value) in line


def _copy_with(src: Path, dst: Path, name: str, index: tuple[int, int], value: float) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    weights = load_file(dst / "model.safetensors")
    weights[name][index] = value
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_master_weight_is_refused_on_the_way_to_gguf(wide_checkpoint, tmp_path, value):
    name = "model.layers.1.mlp.up_proj.weight"
    bad = _copy_with(wide_checkpoint["llama-master"], tmp_path / "bad", name, (3, 4), value)
    with pytest.raises(CheckpointError, match=r"non-finite value .* at index \[3, 4\]") as err:
        convert(bad, tmp_path / "o.gguf", "gguf", {"gguf_type": "tq2_0"})
    assert name in str(err.value) and not (tmp_path / "o.gguf").exists()


def test_f16_overflow_in_a_bf16_embedding_is_refused_naming_it(wide_checkpoint, tmp_path):
    embed = "model.embed_tokens.weight"
    master = wide_checkpoint["bitnet-2b4t-master"]
    big = _copy_with(master, tmp_path / "big", embed, (5, 7), 65536.0)  # smallest past F16
    with pytest.raises(CheckpointError, match="overflow F16") as err:
        convert(big, tmp_path / "o.gguf", "gguf", {"gguf_type": "tq2_0", "embed_type": "f16"})
    assert embed in str(err.value) and not (tmp_path / "o.gguf").exists()
    fits = _copy_with(master, tmp_path / "fits", embed, (5, 7), -65280.0)  # the largest below
    convert(fits, tmp_path / "o.gguf", "gguf", {"gguf_type": "tq2_0", "embed_type": "f16"})


def test_float_values_of_an_unknown_kind_are_refused(tmp_path):
    p1, u = tmp_path / "p1", tmp_path / "u"
    assert cli("pack", FIXTURES / "llama-master", p1).returncode == 0
    assert cli("unpack", p1, u).returncode == 0
    from safetensors.torch import save_file

    tensors = read_all(u)
    save_file(tensors, str(u / "model.safetensors"), metadata={"format": "pt", "bitconvert.ternary_values": "x"})
    r = cli("pack", u, tmp_path / "p2")
    assert r.returncode == 1 and "unknown bitconvert.ternary_values 'x'" in r.stderr
    assert not (tmp_path / "p2").exists()


def test_inputs_are_never_written(tmp_path):
    src = copy_fixture(tmp_path, "bitnet-2b4t-master")
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in src.iterdir()}
    assert cli("pack", src, tmp_path / "o").returncode == 0
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in src.iterdir()} == before
