"""Every check name ``verify`` can emit is in docs/checks.md, the list scripts may rely on: the names
written in the code, and the names real runs emit (integrity, --against with --logits, --roundtrip,
--reproduce, --manifest-check, every --target)."""

from __future__ import annotations

import ast
import re

import pytest
from conftest import FIXTURES, ROOT

from bitconvert.convert import convert
from bitconvert.verify import VerifyRequest, run
from bitconvert.verify.targets import CONSUMERS

DOC = ROOT / "docs" / "checks.md"
#: where the doc lists what follows each prefix a composed run puts before a check's name
#: (docs/checks.md, "Prefixes"); "target." names are listed whole
SECTIONS_AFTER = {
    "": ("Integrity", "Reproduction"),
    "against.": ("Comparison",),
    "roundtrip.there.": ("Comparison",),
    "roundtrip.back.": ("Comparison",),
    "roundtrip.": ("Round trip",),
}


def documented() -> dict[str, set[str]]:
    """Per section of the doc (its ``##`` title, up to a parenthesis), the names its table lists."""
    sections: dict[str, set[str]] = {}
    title = ""
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            title = line[3:].split(" (")[0].strip()
        found = re.match(r"^\| `([^`]+)` \|", line)
        if found:
            sections.setdefault(title, set()).add(found[1])
    return sections


def is_documented(name: str, sections: dict[str, set[str]]) -> bool:
    """``name`` is a documented prefix followed by a name its section lists (a target's name whole)."""
    if name.startswith("target."):
        return name in sections.get("Consumers", set())
    for prefix in sorted(SECTIONS_AFTER, key=len, reverse=True):
        if name.startswith(prefix):
            rest = name[len(prefix):]
            return any(rest in sections.get(title, set()) for title in SECTIONS_AFTER[prefix])
    return False


def names_in_code() -> set[str]:
    """Check names written as literals in the verify package: ``Check("name", ...)``, the round
    trip's legs, and each consumer's ``target.CONSUMER.RULE``."""
    found: set[str] = set()
    for path in (ROOT / "bitconvert" / "verify").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Check" and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found.add(first.value)
    found |= {"roundtrip.convert", "roundtrip.convert_back"}  # the legs, named by a dict's keys
    found |= {f"target.{who}.{rule.name}" for who, c in CONSUMERS.items() for rule in c.rules}
    return found


def test_the_doc_lists_every_name_in_the_code():
    names = documented()
    # a name in the code is emitted under some prefix (compare.py's codes as against.codes, ...)
    missing = sorted(n for n in names_in_code() if not any(is_documented(p + n, names) for p in SECTIONS_AFTER))
    assert missing == []


def test_the_names_are_found_where_the_code_writes_them():
    """The scan of the code sees the checks (a scan that found nothing would pass anything)."""
    code = names_in_code()
    assert {"open", "tensor_set", "codes", "scale", "logits", "argmax", "manifest", "reproduce.bytes",
            "target.llama.cpp.ffn_activation"} <= code  # fmt: skip


def test_an_undocumented_name_is_caught():
    names = documented()
    assert is_documented("against.codes", names) and is_documented("roundtrip.back.scale", names)
    assert is_documented("target.bitnet.cpp.i2_s_layout", names)
    for wrong in ("codez", "against.nothing", "target.llama.cpp.no_rule", "roundtrip.there.convert_back"):
        assert not is_documented(wrong, names), wrong


@pytest.fixture(scope="module")
def emitted(tmp_path_factory) -> set[str]:
    """Every name real runs emit over the fixtures, failures included (a flipped code, a wrong manifest)."""
    tmp = tmp_path_factory.mktemp("names")
    master = FIXTURES / "bitnet-2b4t-256-master"  # rows of 256: every GGUF type holds them
    packed, gguf = tmp / "packed", tmp / "m.gguf"
    convert(master, packed, "hf-packed")
    convert(master, gguf, "gguf", {"gguf_type": "i2_s"})
    manifest = tmp / "manifest.json"
    reports = [
        run(packed, VerifyRequest(against=master, logits=True, manifest=manifest)),
        run(packed, VerifyRequest(manifest_check=manifest)),
        run(FIXTURES / "llama-master", VerifyRequest(against=master)),  # different models: failures
        run(packed, VerifyRequest(roundtrip="gguf")),
        run(packed, VerifyRequest(reproduce=master)),
        run(gguf, VerifyRequest(reproduce=master)),
    ]
    reports += [run(src, VerifyRequest(target=who)) for who in CONSUMERS for src in (packed, gguf)]
    return {c.name for r in reports for c in r.checks}


def test_every_emitted_name_is_documented(emitted):
    names = documented()
    assert {"against.logits", "manifest", "roundtrip.back.codes", "reproduce.bytes", "target.llama.cpp.architecture"} \
        <= emitted
    assert sorted(n for n in emitted if not is_documented(n, names)) == []
