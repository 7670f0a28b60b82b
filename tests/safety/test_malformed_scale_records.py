"""A scale record of the wrong byte count is one line naming the file and tensor, in every format that
keeps them (HF safetensors metadata, GGUF metadata, Nanotron's checkpoint_metadata.json)."""

from __future__ import annotations

import json
import struct

from conftest import FIXTURES, cli

from bitconvert.convert import convert
from bitconvert.ternary.records import SCALES_KEY


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


def test_an_hf_master_with_a_wrong_size_record(tmp_path):
    unpacked = tmp_path / "u"
    assert cli("unpack", FIXTURES / "llama-packed", unpacked).returncode == 0
    f = unpacked / "model.safetensors"
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"][SCALES_KEY], name = _shorten_first_record(header["__metadata__"][SCALES_KEY])
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    f.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n :])
    before = f.read_bytes()
    r = cli("pack", unpacked, tmp_path / "p")
    _one_line_refusal(r, name)
    assert not (tmp_path / "p").exists() and f.read_bytes() == before


def test_a_gguf_with_a_wrong_size_record(tmp_path):
    g = tmp_path / "m.gguf"
    assert cli("convert", FIXTURES / "llama-packed", g, "--to", "gguf", "--allow-fallback").returncode == 0
    raw = bytearray(g.read_bytes())
    key = SCALES_KEY.encode()
    at = raw.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    vtype, length = struct.unpack_from("<IQ", raw, at)
    assert vtype == 8  # a GGUF string
    start = at + 12
    text, name = _shorten_first_record(raw[start : start + length].decode())
    raw[start : start + length] = text.encode()
    g.write_bytes(bytes(raw))
    r = cli("convert", g, tmp_path / "back", "--to", "hf-packed")
    _one_line_refusal(r, name)
    assert not (tmp_path / "back").exists()


def test_a_nanotron_checkpoint_with_a_wrong_size_record(tmp_path):
    nt = tmp_path / "nt"
    r = cli("convert", FIXTURES / "llama-packed", nt, "--to", "nanotron", "--allow-approximate", "--allow-lossy")
    assert r.returncode == 0, r.stderr
    meta_path = nt / "checkpoint_metadata.json"
    meta = json.loads(meta_path.read_text())
    records = meta["custom_metas"]["bitconvert"]["ternary_scales"]
    name = sorted(records)[0]
    records[name][2] = records[name][2][:-2]
    meta_path.write_text(json.dumps(meta))
    _one_line_refusal(cli("inspect", nt, "--no-stats"), name)


def test_a_nanotron_record_one_byte_too_long_is_one_line(tmp_path):
    nt = tmp_path / "nt"
    options = {"tp": 1, "flavor": "pr178", "allow_lossy": True, "allow_approximate": True, "dtype": "BF16"}
    convert(FIXTURES / "llama-packed", nt, "nanotron", options)
    p = nt / "checkpoint_metadata.json"
    meta = json.loads(p.read_text())
    records = meta["custom_metas"]["bitconvert"]["ternary_scales"]
    name = "model.layers.0.mlp.up_proj.weight"
    records[name][2] += "00"  # one byte too many for its dtype
    p.write_text(json.dumps(meta))
    r = cli("convert", nt, tmp_path / "out", "--to", "hf-packed")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "checkpoint_metadata.json" in lines[0] and name in lines[0] and "bytes" in lines[0]
    assert not (tmp_path / "out").exists()
