"""What ``verify`` found: named checks with a figure each, as plain data, JSON or JUnit XML."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree as ET


@dataclass(frozen=True)
class Thresholds:
    """Largest differences that still pass. The defaults demand bit-exactness where it is possible."""

    code_mismatches: int = 0  # differing ternary codes per tensor
    scale_rtol: float = 0.0  # relative difference of a scale, after re-expression in SRC's convention
    atol: float = 0.0  # max abs difference of a dense tensor, REF cast to SRC's dtype
    logits_atol: float = 1e-4  # max abs difference of the runtime's float32 logits
    argmax_agreement: float = 1.0  # fraction of positions whose top token agrees


@dataclass
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "mode": self.mode,
            "src": self.src,
            "against": self.against,
            "checks_total": len(self.checks),
            "checks_failed": len(self.failures),
            "figures": {k: _json_number(v) if isinstance(v, float) else v for k, v in self.figures.items()},
            "notes": self.notes,
            "checks": [c.to_dict() for c in self.checks],
        }

    def to_junit_xml(self, suite_name: str = "bitconvert verify") -> str:
        """JUnit XML: one ``testcase`` per check; a failing one carries a ``failure`` with the figure."""
        suites = ET.Element("testsuites")
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=suite_name,
            tests=str(len(self.checks)),
            failures=str(len(self.failures)),
            errors="0",
            skipped="0",
        )
        props = ET.SubElement(suite, "properties")
        ET.SubElement(props, "property", name="src", value=self.src)
        if self.against:
            ET.SubElement(props, "property", name="against", value=self.against)
        for c in self.checks:
            case = ET.SubElement(suite, "testcase", classname=f"verify.{c.name}", name=c.tensor or c.name)
            if not c.passed:
                message = check_line(c)
                failure = ET.SubElement(case, "failure", message=message, type="VerifyFailure")
                failure.text = message
            elif c.detail:
                ET.SubElement(case, "system-out").text = c.detail
        ET.indent(suites)
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


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
