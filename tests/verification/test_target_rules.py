"""``verify --target CONSUMER``: every rule names its upstream source and is listed in the docs; the
command line names the consumer and the difference (exit 1) or an unknown consumer (exit 2);
transformers has no GGUF loader for bitnet; bitnet.cpp's activation, I2_S layout and row rules.
(Where the consumer runs here, tests/peers/ runs it and shows each rule's fact.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, cli
from gguf_tools import consumer_ggufs, rule_check, rule_outcomes

from bitconvert.convert import convert
from bitconvert.errors import UsageError
from bitconvert.verify import CONSUMERS, verify_target


@pytest.fixture(scope="module")
def ggufs(wide_checkpoint, converted) -> dict[str, Path]:
    return consumer_ggufs(wide_checkpoint, converted)


def test_every_rule_names_its_upstream_source():
    assert set(CONSUMERS) >= {
        "transformers",
        "llama.cpp",
        "bitnet.cpp",
        "bitnet.cpp-arm",
        "nanotron-pr180",
        "nanotron-pr178",
        "nanotron-main",
    }
    for who in CONSUMERS.values():
        assert who.rules
        for rule in who.rules:
            assert rule.fact and rule.source, (who.name, rule.name)
            assert "shared" not in rule.source and ("/" in rule.source or "github.com" in rule.source)


def test_the_docs_list_every_rule():
    doc = (ROOT / "docs" / "consumers.md").read_text()
    for who in CONSUMERS.values():
        section = doc.split(f"### `{who.name}`:", 1)[1].split("###", 1)[0]
        for rule in who.rules:
            assert f"| `{rule.name}` | {rule.fact} | {rule.source} |" in section, (who.name, rule.name)
    assert "docs/consumers.md" in (ROOT / "README.md").read_text()


def test_unknown_consumer_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="known consumers: transformers"):
        verify_target(FIXTURES / "llama-packed", "vllm")
    r = cli("verify", FIXTURES / "llama-packed", "--target", "vllm")
    assert r.returncode == 2 and "unknown --target 'vllm'" in r.stderr


def test_the_command_line_names_the_consumer_and_the_difference(wide_checkpoint, tmp_path):
    r = cli("verify", wide_checkpoint["1bitllm-packed"], "--target", "llama.cpp", "--json")
    assert r.returncode == 0, r.stdout
    r = cli("verify", FIXTURES / "bitnet-2b4t-packed", "--target", "llama.cpp", "--junit", tmp_path / "j.xml")
    assert r.returncode == 1
    assert "FAIL target.llama.cpp.ffn_activation:" in r.stderr and "runs with SiLU" in r.stderr
    assert "FAIL target.llama.cpp.tensor_types:" in r.stderr and "not a multiple of 256" in r.stderr
    assert 'classname="verify.target.llama.cpp.ffn_activation"' in (tmp_path / "j.xml").read_text()


def test_transformers_has_no_gguf_loader_for_bitnet(ggufs):
    assert rule_outcomes(FIXTURES / "llama-packed", "transformers")["format"]
    assert rule_outcomes(FIXTURES / "llama-master", "transformers")["format"]
    c = rule_check(ggufs["1bitllm-tq2_0"], "transformers", "format")
    assert not c.passed and "no GGUF loader for architecture 'bitnet'" in c.detail


def test_bitnet_cpps_activation_layout_and_row_rules(tiny_checkpoint, wide_checkpoint, ggufs, tmp_path):
    for target in ("bitnet.cpp", "bitnet.cpp-arm"):
        c = rule_check(wide_checkpoint["bitnet-2b4t-packed"], target, "ffn_activation")
        assert not c.passed and "390c3077" in c.detail
        assert rule_outcomes(wide_checkpoint["1bitllm-packed"], target)["ffn_activation"]
    # the byte layout: bitconvert's default I2_S is x86; --i2s-layout arm is what ARM builds read
    x86 = ggufs["bitnet-2b4t-i2_s"]
    arm = tmp_path / "arm.gguf"
    convert(wide_checkpoint["bitnet-2b4t-packed"], arm, "gguf", {"gguf_type": "i2_s", "i2s_layout": "arm"})
    assert rule_outcomes(x86, "bitnet.cpp")["i2_s_layout"] and not rule_outcomes(x86, "bitnet.cpp-arm")["i2_s_layout"]
    assert rule_outcomes(arm, "bitnet.cpp-arm")["i2_s_layout"] and not rule_outcomes(arm, "bitnet.cpp")["i2_s_layout"]
    assert rule_outcomes(ggufs["1bitllm-tq2_0"], "bitnet.cpp-arm")["i2_s_layout"]  # no I2_S tensor
    # rows: 40 x 40 = 1600 values fill 64-value blocks (ARM) but not 128-value ones (x86)
    odd = tiny_checkpoint("llama", "packed", hidden=40, intermediate=80, kv_heads=4)
    c = rule_check(odd, "bitnet.cpp", "i2_s_rows")
    assert not c.passed and "x86 layout" in c.detail
    assert rule_outcomes(odd, "bitnet.cpp-arm")["i2_s_rows"]
    assert rule_outcomes(wide_checkpoint["1bitllm-packed"], "bitnet.cpp")["i2_s_rows"]
