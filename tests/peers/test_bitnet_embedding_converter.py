"""``--recipe bitnet.cpp`` on BitNet Embeddings models gives the bytes of Microsoft's own converter.

The converter (bitnet.cpp's ``utils/convert-bitnet-embedding-to-gguf.py``) runs here as it is, with
the additions ``peer_tools.BITNET_EMBEDDING_DRIVER`` records: this tree's llama.cpp gguf-py, the I2_S
type id 36 and its (1, 1) block size, and the pre-tokenizer named where its hash table does not know
a test tokenizer. Every tensor, key, token, score and byte of padding is then compared with
``bitconvert convert --recipe bitnet.cpp``; ``verify --reproduce`` names the recipe on the
converter's file and finds one flipped code in it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, ROOT, run_cli
from peer_tools import run_bitnet_embedding_converter

from bitconvert.formats.gguf.parser import GGUFFile
from bitconvert.verify.reproduce import verify_reproduce
from fixtures.make_embedding_fixtures import GEMMA3, QWEN3, make_embedding_checkpoint

MASTERS = {QWEN3: FIXTURES / f"{QWEN3}-master", GEMMA3: FIXTURES / f"{GEMMA3}-master"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ours(master: Path, out: Path, outtype: str, *extra: str) -> Path:
    done = run_cli("convert", master, out, "--to", "gguf", "--gguf-type", outtype, *extra)
    assert done.returncode == 0, done.stderr
    return out


def first_difference(a: Path, b: Path) -> str:
    """Where two GGUF files part, in words (key or tensor), for a failing assertion."""
    fa, fb = GGUFFile(a), GGUFFile(b)
    for k in fa.metadata:
        if k not in fb.metadata or repr(fa.metadata[k]) != repr(fb.metadata[k]):
            return f"key {k}"
    if list(fa.metadata) != list(fb.metadata):
        return "key order"
    for n in fa.tensors:
        if n not in fb.tensors or not np.array_equal(fa.read_bytes(n), fb.read_bytes(n)):
            return f"tensor {n}"
    return "tensor order or padding"


@pytest.mark.parametrize("kind", [QWEN3, GEMMA3])
@pytest.mark.parametrize("outtype", ["i2_s", "f16"])
def test_recipe_gives_the_converters_bytes(kind, outtype, tmp_path):
    theirs = run_bitnet_embedding_converter(MASTERS[kind], tmp_path / "theirs.gguf", outtype)
    mine = ours(MASTERS[kind], tmp_path / "ours.gguf", outtype, "--recipe", "bitnet.cpp", "--allow-lossy")
    assert sha256(mine) == sha256(theirs), first_difference(theirs, mine)
    f = GGUFFile(theirs)
    arch = f.get("general.architecture")
    assert arch == {QWEN3: "qwen3", GEMMA3: "gemma3"}[kind]
    assert f.get(f"{arch}.pooling_type") == 3  # last token, from modules.json -> 1_Pooling/config.json
    assert "blk.0.attn_q_norm_in.weight" in f.tensors and "output.weight" not in f.tensors
    assert not any(k.startswith("bitconvert.") for k in f.metadata)
    # bitconvert's own defaults differ from the converter's (exact F32 norms, its keys): the comparison can fail
    assert sha256(ours(MASTERS[kind], tmp_path / "default.gguf", outtype, "--embed-type", "bf16")) != sha256(theirs)


def test_layer_order_is_the_converters_past_ten_layers(tmp_path):
    """The converter writes tensors in safetensors' sorted name order (layers.10 before layers.2)."""
    master = make_embedding_checkpoint(tmp_path / "eleven", QWEN3, layers=11, seed=11)
    theirs = run_bitnet_embedding_converter(master, tmp_path / "theirs.gguf", "i2_s")
    mine = ours(master, tmp_path / "ours.gguf", "i2_s", "--recipe", "bitnet.cpp", "--allow-lossy")
    assert sha256(mine) == sha256(theirs), first_difference(theirs, mine)
    order = [n for n in GGUFFile(theirs).tensors if n.startswith("blk.") and n.endswith("attn_q.weight")]
    assert order[:3] == ["blk.0.attn_q.weight", "blk.1.attn_q.weight", "blk.10.attn_q.weight"]


def test_a_mean_below_the_floor_is_clamped_as_the_converter_clamps(tmp_path):
    master = make_embedding_checkpoint(tmp_path / "edge", QWEN3, tiny_mean=True)
    theirs = run_bitnet_embedding_converter(master, tmp_path / "theirs.gguf", "i2_s")
    mine = ours(master, tmp_path / "ours.gguf", "i2_s", "--recipe", "bitnet.cpp", "--allow-lossy")
    assert sha256(mine) == sha256(theirs), first_difference(theirs, mine)
    raw = GGUFFile(theirs).read_bytes("blk.0.attn_v.weight")
    n = 128 * 256
    assert np.frombuffer(raw[n // 4 : n // 4 + 4].tobytes(), "<f4")[0] == np.float32(1e-5)


def test_without_allow_lossy_the_recipe_says_what_it_rounds(tmp_path):
    """The converter rounds (F16 embeddings of tiny bf16 values, Gemma3's norms through F16(w + 1)):
    refused, naming the first tensor, unless asked; with --allow-lossy a warning per tensor."""
    out = tmp_path / "refused.gguf"
    done = run_cli("convert", MASTERS[GEMMA3], out, "--to", "gguf", "--gguf-type", "i2_s", "--recipe", "bitnet.cpp")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "'embed_tokens.weight'" in done.stderr and "values change when stored as F16" in done.stderr
    assert "--allow-lossy" in done.stderr and not list(tmp_path.iterdir())
    done = run_cli("convert", MASTERS[GEMMA3], out, "--to", "gguf", "--gguf-type", "i2_s", "--recipe", "bitnet.cpp",
                   "--allow-lossy")  # fmt: skip
    warned = [line for line in (done.stdout + done.stderr).splitlines() if "values change when stored as" in line]
    assert done.returncode == 0 and any("F16 of w + 1" in line for line in warned), done.stderr
    assert all("norm_in" not in line for line in warned)  # the per-projection norms (near 1) are exact in F16


@pytest.mark.parametrize("kind", [QWEN3, GEMMA3])
@pytest.mark.parametrize("outtype", ["i2_s", "f16"])
def test_reproduce_names_the_recipe_on_the_converters_file(kind, outtype, tmp_path):
    theirs = run_bitnet_embedding_converter(MASTERS[kind], tmp_path / "theirs.gguf", outtype)
    report = verify_reproduce(theirs, MASTERS[kind])
    assert report.passed and report.figures["recipe"] == "bitnet.cpp", [c for c in report.failures][:3]
    checks = {c.name for c in report.checks}
    assert "reproduce.metadata" in checks and "reproduce.dense" in checks
    if outtype == "i2_s":
        assert "reproduce.codes" in checks and "reproduce.bytes" in checks


def test_reproduce_finds_one_flipped_code_in_the_converters_file(tmp_path):
    theirs = run_bitnet_embedding_converter(MASTERS[GEMMA3], tmp_path / "theirs.gguf", "i2_s")
    f = GGUFFile(theirs)
    t = f.tensors["blk.1.ffn_up.weight"]
    data = bytearray(theirs.read_bytes())
    at = t.offset + 5
    top = data[at] >> 6  # one stored code: -1 (0) <-> 0 (1), +1 (2) -> 0 (1); never the invalid 3
    data[at] = (data[at] & 0b00111111) | ((1 if top != 1 else 0) << 6)
    flipped = tmp_path / "flipped.gguf"
    flipped.write_bytes(bytes(data))
    report = verify_reproduce(flipped, MASTERS[GEMMA3], recipe="bitnet.cpp")
    assert not report.passed
    bad = [c for c in report.failures if c.name in ("reproduce.codes", "reproduce.bytes")]
    assert bad and all(c.tensor == "layers.1.mlp.up_proj.weight" for c in bad), bad


FAMILY_WORDS = re.compile(r"qwen3|gemma3", re.IGNORECASE)  # model types, classes, GGUF architectures


def family_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of each string in ``source``'s code (docstrings aside) that names qwen3 or gemma3."""
    import ast

    tree = ast.parse(source)
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr)}  # fmt: skip
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
        and FAMILY_WORDS.search(node.value)
    ]  # fmt: skip


def test_no_code_names_the_families():
    """The families are records: no string in code outside the tables of records (the families, the
    recipes, the consumers' graphs by GGUF architecture) names qwen3 or gemma3."""
    tables = {("model", "families.py"), ("ternary", "recipes.py"), ("gguf", "archs.py")}
    found = []
    for path in sorted((ROOT / "bitconvert").rglob("*.py")):
        if (path.parent.name, path.name) not in tables:
            found += [f"{path.relative_to(ROOT)}:{i}: {text[:60]!r}" for i, text in family_literals(path.read_text())]
    assert not found, "\n".join(found)
    # and the scan does see a branch on a family's name, where one is written
    branch = 'def f(family):\n    """Gemma3 in a docstring is fine."""\n    return family.key == "gemma3-embedding"\n'
    assert family_literals(branch) == [(3, "gemma3-embedding")]


def test_the_converter_runs_unmodified_but_for_the_recorded_additions(tmp_path):
    """The driver changes only what it says: the converter file is the peer's, byte for byte, and the
    output of a run without the pre-tokenizer addition fails where the test tokenizer is unknown."""
    from peer_tools import BITNET_EMBEDDING_CONVERTER, BITNET_EMBEDDING_DRIVER

    if not BITNET_EMBEDDING_CONVERTER.is_file():
        pytest.skip(f"microsoft/BitNet's embedding converter not found at {BITNET_EMBEDDING_CONVERTER}")
    source = BITNET_EMBEDDING_CONVERTER.read_text(encoding="utf-8")
    assert "def quantize_to_i2_s" in source and "special_vocab.special_token_ids[\"eos\"] = 151643" in source
    assert "conv.get_vocab_base_pre = named" in BITNET_EMBEDDING_DRIVER and "conv.main()" in BITNET_EMBEDDING_DRIVER
    copy = tmp_path / "model"
    shutil.copytree(MASTERS[QWEN3], copy)
    with pytest.raises(AssertionError, match="pre-tokenizer was not recognized"):
        run_bitnet_embedding_converter(copy, tmp_path / "x.gguf", "i2_s", pre=None)


def test_pooling_follows_the_side_files(tmp_path):
    """Mean pooling in 1_Pooling/config.json: both write pooling_type 1; no modules.json: the converter
    defaults to mean, bitconvert writes none and says so."""
    copy = tmp_path / "mean"
    shutil.copytree(MASTERS[QWEN3], copy)
    cfg = json.loads((copy / "1_Pooling" / "config.json").read_text())
    cfg.update(pooling_mode_lasttoken=False, pooling_mode_mean_tokens=True)
    (copy / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    theirs = run_bitnet_embedding_converter(copy, tmp_path / "theirs.gguf", "i2_s")
    mine = ours(copy, tmp_path / "ours.gguf", "i2_s", "--recipe", "bitnet.cpp", "--allow-lossy")
    assert sha256(mine) == sha256(theirs) and GGUFFile(theirs).get("qwen3.pooling_type") == 1
    (copy / "modules.json").unlink()
    done = run_cli("convert", copy, tmp_path / "none.gguf", "--to", "gguf", "--embed-type", "bf16")
    assert done.returncode == 0 and "no pooling_type written" in done.stdout + done.stderr
    assert GGUFFile(tmp_path / "none.gguf").get("qwen3.pooling_type") is None
