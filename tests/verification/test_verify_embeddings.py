"""``verify SRC --against REF --embeddings``: the runtime's sentence embeddings of an embedding model
compared text by text; a correct conversion passes, one flipped code fails, and the limit says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FIXTURES, run_cli

pytest.importorskip("torch")

from bitconvert.convert import convert
from bitconvert.formats.gguf.parser import GGUFFile
from bitconvert.verify import VerifyRequest, run
from bitconvert.verify.embeddings import MIN_COSINE, TEXTS

MASTERS = {k: FIXTURES / f"bitnet-embedding-{k}-master" for k in ("qwen3", "gemma3")}


@pytest.fixture(scope="module", params=sorted(MASTERS))
def converted(request, tmp_path_factory):
    master = MASTERS[request.param]
    out = tmp_path_factory.mktemp(request.param)
    convert(master, out / "packed", "hf-packed")
    convert(master, out / "i2s.gguf", "gguf", {"gguf_type": "i2_s"})
    convert(master, out / "f16.gguf", "gguf", {"gguf_type": "f16"})
    return master, out


def embeddings_check(report) -> dict:
    (check,) = [c for c in report["checks"] if c["name"] == "against.embeddings"]
    return check


def verify_json(*args) -> tuple[int, dict]:
    r = run_cli("verify", *args, "--json")
    assert "Traceback" not in r.stderr
    return r.returncode, json.loads(r.stdout)


@pytest.mark.parametrize("layout", ["packed", "i2s.gguf", "f16.gguf"])
def test_a_correct_conversion_passes(converted, layout):
    master, out = converted
    code, report = verify_json(out / layout, "--against", master, "--embeddings")
    if layout != "f16.gguf":  # the tensor checks compare an F16 file's floats with the master's: see the report
        assert code == 0 and report["passed"], [c for c in report["checks"] if not c["passed"]]
    check = embeddings_check(report)
    assert check["passed"] and check["threshold"] == pytest.approx(MIN_COSINE)
    assert check["figure"] >= 1 - 1e-12  # equal weights, equal arithmetic: the same vectors
    assert f"{len(TEXTS)} fixed texts, tokenized by REF's tokenizer" in check["detail"]
    assert len(report["figures"]["against.embedding_cosines"]) == len(TEXTS)


def flip_one_code(path: Path, dst: Path, tensor: str) -> Path:
    """A copy of an I2_S GGUF with one -1 code made +1 (the first such field of ``tensor``'s data)."""
    f = GGUFFile(path)
    data = bytearray(path.read_bytes())
    i = f.tensors[tensor].offset
    while data[i] >> 6 not in (0, 2):  # stored codes 0, 1, 2 mean -1, 0, +1; the top field of each byte
        i += 1
    data[i] ^= 0b10000000
    dst.write_bytes(bytes(data))
    return dst


def test_one_flipped_code_fails_and_the_line_says_what_limits_it(converted, tmp_path):
    master, out = converted
    bad = flip_one_code(out / "i2s.gguf", tmp_path / "bad.gguf", "blk.0.ffn_down.weight")
    report = run(bad, VerifyRequest(against=master, embeddings=True))
    (check,) = [c for c in report.checks if c.name == "against.embeddings"]
    assert not check.passed and check.figure < MIN_COSINE and check.threshold == MIN_COSINE
    assert "float32 arithmetic on equal weights" in check.detail and "codes and scales" in check.detail
    assert any(c.name == "against.codes" and not c.passed for c in report.checks)
    human = run_cli("verify", bad, "--against", master, "--embeddings")
    assert human.returncode == 1 and "FAIL against.embeddings: figure" in human.stderr


def test_a_lower_limit_can_be_given(converted, tmp_path):
    master, out = converted
    bad = flip_one_code(out / "i2s.gguf", tmp_path / "bad.gguf", "blk.0.ffn_down.weight")
    report = run(bad, VerifyRequest(against=master, embeddings=True))
    worst = next(c.figure for c in report.checks if c.name == "against.embeddings")
    _, doc = verify_json(bad, "--against", master, "--embeddings", "--min-cosine", str(worst - 1e-9),
                            "--max-code-mismatches", "1")  # fmt: skip
    assert embeddings_check(doc)["passed"]


def test_requests_that_do_not_fit_the_model_are_usage_errors():
    master = MASTERS["qwen3"]
    for args, message in (
        ((master, "--against", master, "--logits"), "is an embedding model"),
        (
            (FIXTURES / "bitnet-2b4t-master", "--against", FIXTURES / "bitnet-2b4t-master", "--embeddings"),
            "is not an embedding model",
        ),
        ((master, "--embeddings"), "--embeddings compares two models"),
        ((master, "--against", master, "--embeddings", "--min-cosine", "2"), "--min-cosine"),
    ):
        r = run_cli("verify", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr


def test_roundtrip_compares_embeddings_both_ways():
    report = run(MASTERS["gemma3"], VerifyRequest(roundtrip="hf-packed", embeddings=True))
    names = [c.name for c in report.checks if c.name.endswith("embeddings")]
    assert names == ["roundtrip.there.embeddings", "roundtrip.back.embeddings"]
    assert report.passed, [c for c in report.checks if not c.passed]
