"""What ``verify`` found: named checks with a figure each, as plain data, JSON or JUnit XML."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io.staging import write_atomically


@dataclass(frozen=True)
class Thresholds:
    """Largest differences that still pass. The defaults demand bit-exactness where it is possible."""

    code_mismatches: int = 0  # differing ternary codes per tensor
    scale_rtol: float = 0.0  # relative difference of a scale, after re-expression in SRC's convention
    atol: float = 0.0  # max abs difference of a dense tensor, REF cast to SRC's dtype
    logits_atol: float = 1e-4  # max abs difference of the runtime's float32 logits
    argmax_agreement: float = 1.0  # fraction of positions whose top token agrees
    #: lowest cosine of SRC's sentence embedding to REF's (None: derived from how SRC holds its linears)
    min_cosine: float | None = None


@dataclass(slots=True)
class Check:
    """One verdict. ``tensor`` names the tensor it concerns; ``figure`` is the measured number."""

    name: str
    passed: bool
    detail: str = ""
    tensor: str | None = None
    figure: float | None = None
    #: the bound ``figure`` was held to, where there is one
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "tensor": self.tensor,
            "figure": _json_number(self.figure),
            "threshold": _json_number(self.threshold),
            "detail": self.detail,
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as ``json.dumps`` writes it, without a dict and an encoder per check."""
        return (
            f'{{"name": {_json_value(self.name)}, "passed": {_json_value(self.passed)}, '
            f'"tensor": {_json_value(self.tensor)}, "figure": {_json_value(_json_number(self.figure))}, '
            f'"threshold": {_json_value(_json_number(self.threshold))}, "detail": {_json_value(self.detail)}}}'
        )


def _json_number(x: float | None) -> float | str | None:
    # JSON has no inf/nan; a failing figure may be either, so keep it readable.
    if x is None or math.isfinite(x):
        return x
    return str(x)


@dataclass
class VerifyReport:
    """All checks of one ``verify`` run. ``passed`` is True only when every check passed."""

    src: str
    checks: list[Check] = field(default_factory=list)
    #: what kind of run: integrity, against, roundtrip
    mode: str = "integrity"
    against: str | None = None
    #: summary numbers (worst values, counts) for dashboards
    figures: dict[str, Any] = field(default_factory=dict)
    #: sha256 per tensor (integrity runs), ready for ``write_manifest``
    manifest: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    #: where :func:`bitconvert.verify.run` wrote the manifest (None: not asked for, or SRC failed)
    manifest_written: str | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def extend(self, other: "VerifyReport", prefix: str = "") -> None:
        """Take over another report's checks, their names prefixed (e.g. ``"roundtrip."``)."""
        for c in other.checks:
            self.checks.append(Check(prefix + c.name, c.passed, c.detail, c.tensor, c.figure, c.threshold))
        for k, v in other.figures.items():
            self.figures[prefix + k] = v
        self.notes += other.notes

    def summary(self) -> dict[str, dict[str, int]]:
        """Per check name: how many passed and failed."""
        out: dict[str, dict[str, int]] = {}
        for c in self.checks:
            row = out.setdefault(c.name, {"passed": 0, "failed": 0})
            row["passed" if c.passed else "failed"] += 1
        return out

    def largest_figures(self) -> dict[str, float | None]:
        """Per check name: the figure of largest magnitude (None where no check of it has one), in one pass."""
        out: dict[str, float | None] = {}
        for c in self.checks:
            best = out.setdefault(c.name, None)
            if c.figure is not None and (best is None or abs(c.figure) > abs(best)):
                out[c.name] = c.figure
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**self._head(), "checks": [c.to_dict() for c in self.checks]}

    def _head(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "mode": self.mode,
            "src": self.src,
            "against": self.against,
            "checks_total": len(self.checks),
            "checks_failed": len(self.failures),
            "figures": {k: _json_number(v) if isinstance(v, float) else v for k, v in self.figures.items()},
            "notes": self.notes,
        }

    def merge(self, other: "VerifyReport", prefix: str = "") -> None:
        """:meth:`extend`, and ``other``'s reference joined to this one's (``A, B``)."""
        self.extend(other, prefix)
        if other.against:
            self.against = other.against if self.against is None else f"{self.against}, {other.against}"

    def to_json(self, **extra: Any) -> str:
        """:meth:`to_dict` (plus ``extra`` keys) as JSON text: indented, one check per line, so that
        hundreds of thousands of checks are written in a second (json's indenting encoder is pure Python)."""
        head = json.dumps({**self._head(), **extra}, indent=2, default=str)
        rows = ",\n".join("    " + c.to_json() for c in self.checks)
        return head[:-2] + (',\n  "checks": [\n' + rows + "\n  ]\n}\n" if rows else ',\n  "checks": []\n}\n')

    def write_json(self, path: str | Path, **extra: Any) -> None:
        """:meth:`to_json` as a file, written whole or not at all (bitconvert.io.staging)."""
        write_atomically(Path(path), self.to_json(**extra))

    def write_junit(self, path: str | Path, suite_name: str = "bitconvert verify") -> None:
        """:meth:`to_junit_xml` as a file, written whole or not at all (bitconvert.io.staging)."""
        write_atomically(Path(path), self.to_junit_xml(suite_name))

    def to_junit_xml(self, suite_name: str = "bitconvert verify") -> str:
        """JUnit XML: one ``testcase`` per check; a failing one carries a ``failure`` with the figure.

        Written as text, one element per line, as ElementTree would indent it: building a tree of
        200,000 elements and indenting it took most of a large report's time."""
        failed = sum(1 for c in self.checks if not c.passed)
        out = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            "<testsuites>",
            (f'  <testsuite name={_attr(suite_name)} tests="{len(self.checks)}" failures="{failed}" errors="0" '
             'skipped="0">'),
            "    <properties>",
            f'      <property name="src" value={_attr(self.src)} />',
        ]
        if self.against:
            out.append(f'      <property name="against" value={_attr(self.against)} />')
        out.append("    </properties>")
        for c in self.checks:
            case = f"    <testcase classname={_attr('verify.' + c.name)} name={_attr(c.tensor or c.name)}"
            if not c.passed:
                message = check_line(c)
                failure = f'      <failure message={_attr(message)} type="VerifyFailure">{_text(message)}</failure>'
                out += [case + ">", failure, "    </testcase>"]
            elif c.detail:
                out += [case + ">", f"      <system-out>{_text(c.detail)}</system-out>", "    </testcase>"]
            else:
                out.append(case + " />")
        out += ["  </testsuite>", "</testsuites>", ""]
        return "\n".join(out)


def junit_error_xml(src: str, message: str, suite_name: str = "bitconvert verify") -> str:
    """JUnit XML for a run that could not check anything (a usage error, an unreadable manifest): one
    test case carrying an ``error``, so a CI reporter shows the reason instead of "no report found"."""
    return "\n".join([
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<testsuites>",
        f'  <testsuite name={_attr(suite_name)} tests="1" failures="0" errors="1" skipped="0">',
        "    <properties>",
        f'      <property name="src" value={_attr(src)} />',
        "    </properties>",
        '    <testcase classname="verify.run" name="verify">',
        f'      <error message={_attr(message)} type="VerifyError">{_text(message)}</error>',
        "    </testcase>",
        "  </testsuite>",
        "</testsuites>",
        "",
    ])


_JSON_STRING = json.encoder.encode_basestring_ascii  # what json.dumps writes for a str (C)
_JSON_ANY = json.JSONEncoder(default=str).encode


def _json_value(v: Any) -> str:
    if v is None or v is True or v is False:
        return "null" if v is None else "true" if v else "false"
    if type(v) is str:
        return _JSON_STRING(v)
    if type(v) in (int, float):
        return repr(v)  # finite: to_dict spells inf and nan as strings
    return _JSON_ANY(v)


def _text(text: str) -> str:
    """Character data escaped as ElementTree escapes it."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _attr(text: str) -> str:
    """A quoted attribute value escaped as ElementTree escapes it (line breaks and tabs as references)."""
    text = _text(text).replace('"', "&quot;").replace("\r", "&#13;").replace("\n", "&#10;").replace("\t", "&#09;")
    return f'"{text}"'


def format_figure(x: float | None) -> str:
    if x is None:
        return ""
    if isinstance(x, int) or (math.isfinite(x) and float(x).is_integer() and abs(x) < 1e15):
        return str(int(x))
    return f"{x:.6g}"


def check_line(c: Check) -> str:
    """One line naming the check, the tensor and the figure: what CI logs show for a failure."""
    parts = [c.name]
    if c.tensor:
        parts.append(f"tensor {c.tensor!r}")
    if c.figure is not None:
        bound = f" (limit {format_figure(c.threshold)})" if c.threshold is not None else ""
        parts.append(f"figure {format_figure(c.figure)}{bound}")
    if c.detail:
        parts.append(c.detail)
    return ": ".join(parts)
