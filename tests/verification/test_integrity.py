"""``verify`` on its own: every shipped fixture passes; one defect each (a 2-bit code 3, a missing,
unexpected or misshapen tensor, a truncated file, a NaN, a config that disagrees, no tokenizer)
fails naming the tensor; digests cost nothing when no manifest is wanted.

Damaged copies are written with the official safetensors library (not bitconvert's writer).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from conftest import FIXTURES, cli
from verify_tools import LLAMA_PACKED, PACKED, SOURCES, Q, damaged_copy, failing, fails

from bitconvert.verify import verify_integrity


def test_every_shipped_fixture_passes(fixture_dir):
    report = verify_integrity(fixture_dir)
    assert report.passed, fails(report)
    names = {c.name for c in report.checks}
    assert {"open", "config", "tensor_set", "readable", "finite", "side_files", "quantization_config"} <= names
    if "packed" in fixture_dir.name:
        codes = [c for c in report.checks if c.name == "codes"]
        scales = [c for c in report.checks if c.name == "scale"]
        assert len(codes) == len(scales) == 14 and all(c.figure == 0 for c in codes)
        assert all(c.figure > 0 for c in scales)


def test_fixtures_pass_on_the_command_line():
    for name in SOURCES[:2]:
        r = cli("verify", FIXTURES / name)
        assert r.returncode == 0 and "PASSED" in r.stdout, r.stdout + r.stderr


def test_a_code_3_fails_naming_the_tensor_row_and_column(tmp_path):
    def three(t):
        w = t[Q].clone()
        w[2, 7] = int(w[2, 7]) | (3 << 4)  # plane 2: unpacked row 2 + 2 * 64/4 = 34
        t[Q] = w

    report = verify_integrity(damaged_copy(PACKED, tmp_path / "bad", three))
    assert fails(report) == [("readable", Q)]
    assert "code 3" in report.failures[0].detail and "row 34, column 7" in report.failures[0].detail


def test_a_missing_tensor_fails(tmp_path):
    name = "model.layers.0.mlp.ffn_sub_norm.weight"
    report = verify_integrity(damaged_copy(PACKED, tmp_path / "bad", lambda t: t.pop(name)))
    assert fails(report) == [("open", name)] and "missing" in report.failures[0].detail


def test_a_wrong_shape_fails(tmp_path):
    name = "model.layers.1.post_attention_layernorm.weight"
    report = verify_integrity(damaged_copy(PACKED, tmp_path / "bad", lambda t: t.__setitem__(name, t[name][:-1])))
    assert fails(report) == [("open", name)]
    assert "[63]" in report.failures[0].detail and "[64]" in report.failures[0].detail


def test_an_unexpected_tensor_fails(tmp_path):
    report = verify_integrity(
        damaged_copy(LLAMA_PACKED, tmp_path / "bad", lambda t: t.__setitem__("model.extra.weight", torch.ones(4)))
    )
    assert fails(report) == [("open", "model.extra.weight")] and "unexpected" in report.failures[0].detail


def test_a_truncated_file_fails_naming_the_cut_tensor(tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(PACKED, bad)
    f = bad / "model.safetensors"
    os.truncate(f, f.stat().st_size - 10)
    raw = (PACKED / "model.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    header.pop("__metadata__", None)
    last = max(header, key=lambda k: header[k]["data_offsets"][1])  # stored last: the one cut short
    r = cli("verify", bad, "--json")
    assert r.returncode == 1
    (fail,) = failing(r)
    assert fail["tensor"] == last and "truncated" in fail["detail"]
    from safetensors import safe_open

    with pytest.raises(Exception):  # the official reader agrees the file is broken
        with safe_open(str(f), "pt") as st:
            st.get_tensor(last)


def test_a_nan_in_a_dense_tensor_fails(tmp_path):
    name = "model.norm.weight"

    def poison(t):
        w = t[name].clone()
        w[[3, 9]] = float("nan")
        t[name] = w

    report = verify_integrity(damaged_copy(PACKED, tmp_path / "bad", poison))
    assert fails(report) == [("finite", name)] and report.failures[0].figure == 2


def test_a_config_that_disagrees_fails(tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(PACKED, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["eos_token_id"] = 100000
    (bad / "config.json").write_text(json.dumps(cfg))
    report = verify_integrity(bad)
    assert fails(report) == [("config", None)] and "eos_token_id 100000" in report.failures[0].detail


def test_a_missing_tokenizer_fails(tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(PACKED, bad)
    (bad / "tokenizer.json").unlink()
    report = verify_integrity(bad)
    assert fails(report) == [("side_files", None)] and "tokenizer" in report.failures[0].detail


def test_the_reports_shape_through_the_library():
    report = verify_integrity(PACKED)
    d = report.to_dict()
    assert report.passed and d["passed"] and d["checks_failed"] == 0
    assert set(d["checks"][0]) == {"name", "passed", "tensor", "figure", "threshold", "detail"}
    assert report.manifest is not None and len(report.manifest["tensors"]) == 24


def test_digests_are_skipped_when_no_manifest_is_wanted_and_checks_stay_the_same():
    hashed, plain = verify_integrity(PACKED), verify_integrity(PACKED, digests=False)
    assert hashed.manifest is not None and plain.manifest is None
    assert [(c.name, c.passed, c.detail, c.tensor) for c in plain.checks] == [
        (c.name, c.passed, c.detail, c.tensor) for c in hashed.checks
    ]
