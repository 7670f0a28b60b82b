"""A scale record of the wrong byte count is one line naming the file and tensor, in every format that keeps them."""

from __future__ import annotations

import json
import struct

import pytest
from conftest import FIXTURES, run_cli

from bitconvert.errors import CheckpointError
from bitconvert.ternary import LinearClass, Scale
from bitconvert.ternary.records import SCALES_KEY, decode_record, encode_record


def _shorten_first_record(text: str) -> tuple[str, str]:
    """``text`` with one byte cut from the first record's scale, padded back to the same length."""
    records = json.loads(text)
    name = sorted(records)[0]
    records[name][2] = records[name][2][:-2]
    new = json.dumps(records, separators=(",", ":"))
    assert len(new) <= len(text)
    return new[:-1] + " " * (len(text) - len(new)) + "}", name


def _one_line_refusal(r, name: str) -> None:
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"malformed {SCALES_KEY} record" in lines[0] and name in lines[0], lines[0]
    assert "bytes, a" in lines[0], lines[0]


def test_record_round_trip_and_wrong_size():
    scale = Scale.of(0.0123, LinearClass.AUTOBITLINEAR, "BF16")
    item = encode_record(scale)
    assert decode_record(item, "f", "w").scale == scale
    with pytest.raises(CheckpointError, match=r"scale has 1 bytes, a BF16 value has 2"):
        decode_record([item[0], item[1], item[2][:2]], "f", "w")
    with pytest.raises(CheckpointError, match="a list of 3 or 5 strings"):
        decode_record({"x": 1}, "f", "w")


def test_hf_master_with_wrong_size_record(tmp_path):
    unpacked = tmp_path / "u"
    assert run_cli("unpack", FIXTURES / "llama-packed", unpacked).returncode == 0
    f = unpacked / "model.safetensors"
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"][SCALES_KEY], name = _shorten_first_record(header["__metadata__"][SCALES_KEY])
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    f.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n :])
    before = f.read_bytes()
    r = run_cli("pack", unpacked, tmp_path / "p")
    _one_line_refusal(r, name)
    assert not (tmp_path / "p").exists() and f.read_bytes() == before


def test_gguf_with_wrong_size_record(tmp_path):
    g = tmp_path / "m.gguf"
    assert run_cli("convert", FIXTURES / "llama-packed", g, "--to", "gguf", "--allow-fallback").returncode == 0
    raw = bytearray(g.read_bytes())
    key = SCALES_KEY.encode()
    at = raw.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    vtype, length = struct.unpack_from("<IQ", raw, at)
    assert vtype == 8  # a GGUF string
    start = at + 12
    text, name = _shorten_first_record(raw[start : start + length].decode())
    raw[start : start + length] = text.encode()
    g.write_bytes(bytes(raw))
    r = run_cli("convert", g, tmp_path / "back", "--to", "hf-packed")
    _one_line_refusal(r, name)
    assert not (tmp_path / "back").exists()


def test_nanotron_with_wrong_size_record(tmp_path):
    nt = tmp_path / "nt"
    r = run_cli("convert", FIXTURES / "llama-packed", nt, "--to", "nanotron", "--allow-approximate", "--allow-lossy")
    assert r.returncode == 0, r.stderr
    meta_path = nt / "checkpoint_metadata.json"
    meta = json.loads(meta_path.read_text())
    records = meta["custom_metas"]["bitconvert"]["ternary_scales"]
    name = sorted(records)[0]
    records[name][2] = records[name][2][:-2]
    meta_path.write_text(json.dumps(meta))
    _one_line_refusal(run_cli("inspect", nt, "--no-stats"), name)
