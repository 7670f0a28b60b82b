"""Trustworthy at the boundary: every path bitconvert writes, typed configs, consistent GGUF vocabularies,
other producers' files read as they are. Each case runs the real command line: one stderr line, the
documented exit code, nothing left behind, the input unchanged."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, make_checkpoint, run_cli

from bitconvert.formats import open_checkpoint
from bitconvert.formats.gguf.parser import GGUFFile


def one_error_line(r: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert r.returncode == code, (r.returncode, r.stdout[-500:], r.stderr[-500:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def no_staging(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if ".bitconvert-" in p.name]


# --- every file bitconvert writes: a new path or a regular file -----------------------------------


@pytest.fixture
def special_files(tmp_path):
    """A FIFO, a directory and (as root) a character device like /dev/null, all inside the test folder."""
    found = {"fifo": tmp_path / "fifo", "dir": tmp_path / "dir"}
    os.mkfifo(found["fifo"])
    found["dir"].mkdir()
    try:
        os.mknod(tmp_path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        found["device"] = tmp_path / "null"
    except PermissionError:
        pass  # only root makes device nodes; the FIFO and directory cases still run
    return found


@pytest.mark.parametrize("kind", ["fifo", "dir", "device"])
@pytest.mark.parametrize("option", ["--junit", "--manifest"])
def test_a_report_never_replaces_a_device_fifo_or_directory(special_files, kind, option, tmp_path):
    if kind not in special_files:
        pytest.skip("making a device node needs root")
    target = special_files[kind]
    before = os.lstat(target).st_mode
    r = run_cli("verify", FIXTURES / "llama-packed", option, target)
    one_error_line(r, 2, str(target), "give a new path or a regular file")
    assert os.lstat(target).st_mode == before
    no_staging(tmp_path)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_outputs_never_replace_a_device_or_fifo_even_with_force(special_files, kind, tmp_path):
    if kind not in special_files:
        pytest.skip("making a device node needs root")
    target = special_files[kind]
    before = os.lstat(target).st_mode
    for args in (("convert", FIXTURES / "bitnet-2b4t-256-packed", target, "--to", "gguf", "--force"),
                 ("pack", FIXTURES / "llama-master", target, "--force"),
                 ("logits", FIXTURES / "llama-master", "--tokens", "1,2", "--out", target, "--force")):  # fmt: skip
        r = run_cli(*args)
        one_error_line(r, 2, str(target), "give a new path or a regular file")
        assert os.lstat(target).st_mode == before
    no_staging(tmp_path)


def test_a_gguf_output_never_replaces_a_directory(tmp_path):
    (tmp_path / "out.gguf").mkdir()
    r = run_cli("convert", FIXTURES / "bitnet-2b4t-256-packed", tmp_path / "out.gguf", "--to", "gguf", "--force")
    one_error_line(r, 2, "is a directory")
    assert (tmp_path / "out.gguf").is_dir()
    no_staging(tmp_path)


def test_a_manifest_to_check_must_be_a_regular_file(special_files):
    r = run_cli("verify", FIXTURES / "llama-packed", "--manifest-check", special_files["fifo"])
    one_error_line(r, 1, "manifest is a FIFO, not a regular file")


def test_a_regular_report_file_is_replaced(tmp_path):
    report = tmp_path / "r.xml"
    report.write_text("old")
    assert run_cli("verify", FIXTURES / "llama-packed", "--junit", report).returncode == 0
    assert report.read_text().startswith("<?xml")


# --- GGUF headers and vocabularies ------------------------------------------------------------------


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def test_a_block_type_tensor_without_dimensions_is_one_line(tmp_path):
    f = tmp_path / "zero.gguf"
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + _string("general.architecture") + struct.pack("<I", 8)
    head += _string("bitnet") + _string("blk.0.attn_q.weight") + struct.pack("<I", 0) + struct.pack("<IQ", 35, 0)
    f.write_bytes(head + b"\0" * (-len(head) % 32) + b"\0" * 66)
    for cmd in (("inspect", f), ("convert", f, tmp_path / "o", "--to", "hf-packed")):
        one_error_line(run_cli(*cmd), 1, "blk.0.attn_q.weight", "needs a dimension")
    r = run_cli("verify", f)
    assert r.returncode == 1 and "needs a dimension" in r.stdout + r.stderr
    assert not (tmp_path / "o").exists()


def _rewrite_tokens(src: Path, dst: Path, edit) -> None:
    """``src`` with its tokenizer.ggml.tokens list replaced by ``edit(tokens)`` (gguf-py's writer)."""
    import gguf

    reader = gguf.GGUFReader(src)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    writer = gguf.GGUFWriter(dst, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = field.contents()
        if name == "tokenizer.ggml.tokens":
            value = edit(value)
        vtype = field.types[0]
        writer.add_key_value(name, value, vtype, sub_type=field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tq2_gguf(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "m.gguf"
    assert run_cli("convert", FIXTURES / "bitnet-2b4t-256-packed", out, "--to", "gguf").returncode == 0
    return out


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda t: t + [f"extra{i}" for i in range(10)], "330 tokens for 320 embedding rows"),
        (lambda t: ["same"] * len(t), "holds 'same' twice"),
    ],
    ids=["more-tokens-than-rows", "every-token-the-same"],
)
def test_an_inconsistent_gguf_vocabulary_is_refused_before_writing(tq2_gguf, tmp_path, edit, needle):
    bad = tmp_path / "bad.gguf"
    _rewrite_tokens(tq2_gguf, bad, edit)
    r = run_cli("convert", bad, tmp_path / "out", "--to", "hf-packed")
    one_error_line(r, 1, "tokenizer.ggml.tokens", needle)
    assert not (tmp_path / "out").exists()
    no_staging(tmp_path)


def test_unused_ids_are_unused_tokens_as_llama_cpp_writes_them(tmp_path):
    """Ids no tokenizer entry uses become [PADn] of type UNUSED (llama.cpp's converter does the same),
    so llama.cpp never reads the text "[PAD321]" as token 321."""
    import gguf

    src = make_checkpoint(tmp_path / "m", "llama", "packed", hidden=256, intermediate=512, vocab=324)
    out = tmp_path / "m.gguf"
    assert run_cli("convert", src, out, "--to", "gguf").returncode == 0
    reader = gguf.GGUFReader(out)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert tokens[321] == "[PAD321]" and types[321] == gguf.TokenType.UNUSED
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (see .ci/run)")
    model = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    assert 321 not in model.tokenize(b"[PAD321]", add_bos=False, special=True)


# --- configs typed strictly ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda c: c["quantization_config"].update(use_rms_norm="false"), "quantization_config.use_rms_norm must be true or false"),
        (lambda c: c.update(tie_word_embeddings="false"), "tie_word_embeddings must be true or false"),
        (lambda c: c.update(num_hidden_layers=2.0), "num_hidden_layers must be a whole number"),
    ],
    ids=["use_rms_norm-string", "tie-string", "layers-float"],
)
def test_config_values_are_typed_strictly(tmp_path, edit, needle):
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "bitnet-2b4t-packed", src)
    cfg = json.loads((src / "config.json").read_text())
    edit(cfg)
    (src / "config.json").write_text(json.dumps(cfg))
    one_error_line(run_cli("pack", src, tmp_path / "out"), 1, "config.json", needle)
    assert not (tmp_path / "out").exists()


# --- other producers' files read as they are ----------------------------------------------------------


def test_an_all_zero_i2_s_tensor_with_scale_0_reads_as_quantize_i2_s_writes_it(tmp_path):
    """bitnet.cpp's quantize_i2_s stores scale 0 for an all-zero tensor: read, verified, converted."""
    from safetensors.torch import load_file, save_file

    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "bitnet-2b4t-256-master", src)
    name = "model.layers.0.mlp.up_proj.weight"
    tensors = load_file(src / "model.safetensors")
    tensors[name].zero_()
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "m.gguf"
    assert run_cli("convert", src, out, "--to", "gguf", "--gguf-type", "i2_s").returncode == 0
    info = GGUFFile(out).tensors["blk.0.ffn_up.weight"]
    n = int(np.prod(info.shape)) // 4
    with open(out, "r+b") as f:  # the scale as quantize_i2_s writes it for zeros, padding as llama.cpp leaves it
        f.seek(info.offset + n)
        f.write(struct.pack("<f", 0.0) + bytes(range(1, 29)))
    ckpt = open_checkpoint(out)
    tw = ckpt.tensors[name].load()
    assert not tw.codes.any() and tw.scale.item() == 0.0
    assert run_cli("verify", out).returncode == 0
    back = tmp_path / "back"
    assert run_cli("convert", out, back, "--to", "hf-packed", "--linear-class", "bitlinear").returncode == 0
    assert run_cli("verify", back).returncode == 0


def test_reproduce_compares_data_bytes_not_padding(tmp_path):
    """llama.cpp's quantizer leaves the 28 bytes after each I2_S scale uninitialised: --reproduce ignores them."""
    out = tmp_path / "m.gguf"
    master = FIXTURES / "bitnet-2b4t-256-master"
    assert run_cli("convert", master, out, "--to", "gguf", "--gguf-type", "i2_s").returncode == 0
    f = GGUFFile(out)
    with open(out, "r+b") as fh:
        for info in f.tensors.values():
            if info.type == 36:
                fh.seek(info.offset + info.nbytes - 28)
                fh.write(b"\xaa" * 28)
    r = run_cli("verify", out, "--reproduce", master, "--recipe", "transformers", "--json")
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["passed"], [c for c in report["checks"] if not c["passed"]][:3]
    assert any("padding bytes not compared" in c["detail"] for c in report["checks"])


def test_json_is_printed_on_every_outcome(tmp_path):
    r = run_cli("verify", tmp_path / "missing", "--json")
    assert r.returncode == 2 and json.loads(r.stdout)["error"].endswith("no such file or directory")


def test_junit_is_written_on_a_usage_error(tmp_path):
    report = tmp_path / "r.xml"
    r = run_cli("verify", tmp_path / "missing", "--junit", report)
    assert r.returncode == 2
    text = report.read_text()
    assert 'errors="1"' in text and "no such file or directory" in text


def test_a_nanotron_vocabulary_padded_by_nanotron_is_trimmed_with_a_warning(tmp_path):
    """The tokenizer's 320 tokens padded to 321 rows for tp=3: read back with 320, saying so."""
    src = make_checkpoint(tmp_path / "m", "1bitllm", "master", hidden=96, intermediate=192, heads=6, kv_heads=3)
    nt = tmp_path / "nt"
    assert run_cli("convert", src, nt, "--to", "nanotron", "--tp", "3", "--allow-lossy").returncode == 0
    assert json.loads((nt / "model_config.json").read_text())["vocab_size"] == 321
    meta = json.loads((nt / "checkpoint_metadata.json").read_text())
    meta["custom_metas"] = None  # what Nanotron's own save leaves
    (nt / "checkpoint_metadata.json").write_text(json.dumps(meta))
    ckpt = open_checkpoint(nt)
    assert ckpt.config.vocab_size == 320
    assert any("Nanotron's padding" in w and "320" in w for w in ckpt.warnings)
    assert ckpt.tensors["model.embed_tokens.weight"].shape[0] == 320


# --- error lines ----------------------------------------------------------------------------------------


def test_control_characters_in_a_path_stay_on_one_line(tmp_path):
    r = run_cli("inspect", tmp_path / "no\nsuch")
    one_error_line(r, 2, "no\\nsuch")


def test_an_unreadable_src_is_one_line_not_a_usage_box(tmp_path):
    """click's own readability check printed a usage box (exit 2); bitconvert says it in one line, exit 1."""
    if os.geteuid() == 0:
        pytest.skip("root reads a mode-000 folder")
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "llama-packed", src)
    src.chmod(0)
    try:
        one_error_line(run_cli("inspect", src), 1, "Permission denied")
    finally:
        src.chmod(0o755)


def test_click_does_not_check_src_readability_itself(monkeypatch):
    """The same, where the test runs as root: click would ask os.access and print its usage box."""
    from typer.testing import CliRunner

    from bitconvert.cli import app

    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    result = CliRunner().invoke(app, ["inspect", str(FIXTURES / "llama-packed"), "--json", "--no-stats"])
    assert result.exit_code == 0, result.output
