"""`verify` across tools on GGUF: bitconvert's GGUF of a master, and a GGUF written by llama.cpp's own
converter (run from ../shared/peers, unmodified but for its vocabulary, see LLAMA_CPP_WRAPPER)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, make_checkpoint, run_cli

from bitconvert.formats.gguf.parser import GGUFFile

DIMS = {"hidden": 256, "intermediate": 512, "layers": 2, "heads": 4, "kv_heads": 2}  # TQ rows: multiples of 256
LLAMA_CPP = ROOT.parent / "shared" / "peers" / "llama.cpp-0c1e57098"

# llama.cpp's converter reads a BitnetForCausalLM vocabulary as SentencePiece (tokenizer.model) and
# names a BPE pre-tokenizer by hashing a probe text against published vocabularies; the test models
# hold a small Llama-3-style byte-level BPE. Those two methods are replaced; quantization is untouched.
LLAMA_CPP_WRAPPER = r"""
import runpy, sys
from pathlib import Path
peer = Path(sys.argv[1])
sys.path[:0] = [str(peer), str(peer / "gguf-py")]
from conversion import base, bitnet
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "llama-bpe"
bitnet.BitnetModel.set_vocab = lambda self: self._set_vocab_gpt2()
sys.argv = [str(peer / "convert_hf_to_gguf.py"), *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def verify_json(*args) -> tuple[subprocess.CompletedProcess, dict]:
    r = run_cli("verify", *args, "--json")
    return r, json.loads(r.stdout)


def failed(report: dict) -> list[tuple[str, str | None]]:
    return [(c["name"], c["tensor"]) for c in report["checks"] if not c["passed"]]


def test_verify_passes_on_bitconvert_gguf_of_a_master(tmp_path):
    # the 2B-4T master's config says quantization_mode online; the GGUF holds codes and scales
    master = make_checkpoint(tmp_path / "master", "bitnet-2b4t", "master", **DIMS, seed=11)
    out = tmp_path / "m.gguf"
    assert run_cli("convert", master, out, "--to", "gguf").returncode == 0
    r, report = verify_json(out)
    assert r.returncode == 0 and report["passed"], failed(report)
    r, report = verify_json(out, "--against", master)
    assert r.returncode == 0 and report["passed"], failed(report)


@pytest.fixture(scope="module")
def llama_cpp_pair(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(master, llama.cpp's TQ2_0 GGUF of it, bitconvert's TQ2_0 GGUF of it)."""
    if not (LLAMA_CPP / "convert_hf_to_gguf.py").is_file():
        pytest.skip(f"llama.cpp's converter is not at {LLAMA_CPP}")
    root = tmp_path_factory.mktemp("llamacpp-verify")
    master = make_checkpoint(root / "master", "1bitllm", "master", **DIMS, seed=12)
    theirs, ours = root / "llamacpp.gguf", root / "bitconvert.gguf"
    cmd = [sys.executable, "-c", LLAMA_CPP_WRAPPER, str(LLAMA_CPP), str(master), "--outtype", "tq2_0",
           "--outfile", str(theirs), "--no-lazy"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert run_cli("convert", master, ours, "--to", "gguf").returncode == 0
    return master, theirs, ours


def test_llama_cpp_gguf_verifies_against_bitconvert_gguf(llama_cpp_pair, tmp_path):
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
    from bitconvert.formats.gguf.stream_writer import kv_f32
    from tests.test_gguf import rewrite_gguf

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


def test_foreign_gguf_floats_become_the_shortest_decimal(llama_cpp_pair, tmp_path):
    master, theirs, _ = llama_cpp_pair
    out = tmp_path / "hf"
    assert run_cli("convert", theirs, out, "--to", "hf-packed").returncode == 0
    cfg = json.loads((out / "config.json").read_text())
    src = json.loads((master / "config.json").read_text())
    assert cfg["rms_norm_eps"] == src["rms_norm_eps"] == 1e-05 and cfg["rope_theta"] == src["rope_theta"]
    assert '"rms_norm_eps": 1e-05' in (out / "config.json").read_text()


def test_inspect_names_the_family_and_the_files_own_architecture(tmp_path):
    """`inspect` keeps `architecture` the model family and says which GGUF architecture the file declares."""
    from bitconvert.convert import convert
    from bitconvert.describe import describe_checkpoint

    src = ROOT / "fixtures" / "bitnet-2b4t-256-packed"
    for gtype, arch in (("tq2_0", "bitnet"), ("i2_s", "bitnet-b1.58")):
        out = tmp_path / f"{gtype}.gguf"
        convert(src, out, "gguf", {"gguf_type": gtype})
        d = describe_checkpoint(out)
        assert d["architecture"] == "bitnet-b1.58" and d["gguf_architecture"] == arch
        assert ("i2s_layout" in d) == (gtype == "i2_s")
    assert "gguf_architecture" not in describe_checkpoint(src)


def test_wide_fixture_rows_fill_tq_blocks():
    cfg = json.loads((ROOT / "fixtures" / "bitnet-2b4t-256-master" / "config.json").read_text())
    assert cfg["hidden_size"] % 256 == 0 and cfg["intermediate_size"] % 256 == 0
