"""Inputs from fine-tuning, made by the real producers (fixtures/make_finetune_fixtures.py): read,
pack, verify. onebitllms output, onebitllms' bf16 export, a transformers Trainer checkpoint-N/."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from conftest import FIXTURES, read_all

from bitconvert.convert import convert
from bitconvert.formats import open_checkpoint
from bitconvert.ternary import LinearClass, unpack_codes
from bitconvert.verify import verify_against, verify_integrity
from bitconvert.verify.reproduce import verify_reproduce

ONEBIT = FIXTURES / "onebitllms-packed"
ONEBIT_BF16 = FIXTURES / "onebitllms-bf16"
TRAINER = FIXTURES / "trainer-checkpoint" / "checkpoint-1"
LINEAR = "model.layers.0.self_attn.q_proj.weight"


def test_onebitllms_output_reads_as_bitlinear_and_reproduces():
    ck = open_checkpoint(ONEBIT)
    assert ck.format == "hf-packed" and ck.source_linear_class() is LinearClass.BITLINEAR
    assert ck.config.raw.get("is_bitnet_config") is True
    assert verify_integrity(ONEBIT).passed
    report = verify_reproduce(ONEBIT, FIXTURES / "llama-master")
    assert report.passed and report.figures["recipe"] == "onebitllms"


def test_onebitllms_output_packs_and_converts_unchanged(tmp_path):
    convert(ONEBIT, tmp_path / "again", "hf-packed")
    theirs, ours = read_all(ONEBIT), read_all(tmp_path / "again")
    assert all(torch.equal(theirs[n], ours[n]) for n in theirs)  # codes and bf16 scales kept bit for bit
    convert(ONEBIT, tmp_path / "m.gguf", "gguf", {"gguf_type": "tq2_0", "allow_fallback": True})
    assert verify_against(tmp_path / "m.gguf", ONEBIT).passed


def test_onebitllms_bf16_export_is_recovered_not_requantized(tmp_path):
    ck = open_checkpoint(ONEBIT_BF16)
    assert ck.format == "hf-bf16"
    result = convert(ONEBIT_BF16, tmp_path / "packed", "hf-packed", {"linear_class": "bitlinear"})
    assert result.report.ternary_sources == {"recovered": 14}
    ours, theirs = read_all(tmp_path / "packed"), read_all(ONEBIT)
    for name in theirs:
        if theirs[name].dtype == torch.uint8:
            assert np.array_equal(unpack_codes(ours[name].numpy()), unpack_codes(theirs[name].numpy())), name
        elif name.endswith("weight_scale"):
            # the export stores codes / s in bf16: 1/(that magnitude) comes back within one bf16 step
            rel = float((ours[name].double() - theirs[name].double()).abs() / theirs[name].double())
            assert rel <= 2**-7, name


def test_trainer_checkpoint_reads_packs_verifies_and_never_unpickles(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    ck = open_checkpoint(TRAINER)
    assert ck.format == "hf-bf16"
    notes = " | ".join(ck.notes)
    for name in ("optimizer.pt", "rng_state.pth", "scheduler.pt"):
        assert name in notes
    assert "trainer_state.json" in notes
    out = tmp_path / "packed"
    result = convert(TRAINER, out, "hf-packed")
    assert result.report.ternary_sources == {"quantized": 14}
    assert not (out / "trainer_state.json").exists() and not list(out.glob("*.pt*"))
    assert verify_against(out, TRAINER).passed
    # the step moved the weights: this is not the master it started from
    assert not torch.equal(read_all(TRAINER)[LINEAR], read_all(FIXTURES / "llama-master")[LINEAR])


@pytest.mark.parametrize("path", [ONEBIT, ONEBIT_BF16])
def test_finetune_fixtures_pass_integrity(path):
    assert verify_integrity(path).passed


def test_trainer_checkpoint_integrity_names_the_missing_tokenizer():
    # transformers 5's Trainer writes no tokenizer into checkpoint-N/: the one thing integrity flags
    report = verify_integrity(TRAINER)
    assert [(c.name, c.detail) for c in report.failures] == [("side_files", "no tokenizer.json or tokenizer.model")]
