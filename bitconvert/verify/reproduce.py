"""``verify PUBLISHED --reproduce MASTER``: is a published ternary file what its master says?

PUBLISHED's format is rebuilt from MASTER with a producer recipe (see :mod:`bitconvert.ternary.recipes`)
and PUBLISHED's own storage choices (scale dtype and convention, GGUF type, I2_S layout), in a
temporary directory, then compared tensor by tensor as stored:

- ``reproduce.codes``: the ternary codes (how many differ, the first position);
- ``reproduce.scale``: the scale bit for bit, in PUBLISHED's dtype and convention (by how much);
- ``reproduce.bytes`` (GGUF): the stored bytes, which also hold per-block ``d`` and padding;
- ``reproduce.nondegenerate``: a published weight whose codes are all zero or all one value;
- ``reproduce.dense``: embeddings and norms, value for value.

With ``recipe="auto"`` every recipe the format takes is tried; the report is that of the recipe
that reproduces PUBLISHED bit for bit, or else of the closest one (fewest differing codes, then
scales), and names it. Nothing is printed; reuse :class:`VerifyReport` for JSON and JUnit.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..model.checkpoint import Checkpoint, Value
from ..convert import convert
from ..dtypes import dtype_name
from ..errors import BitconvertError, CheckpointError, UsageError
from ..formats import Progress, no_progress, open_checkpoint
from ..ternary.recipes import GGUF_RECIPES, HF_PACKED_RECIPES, Recipe
from ..ternary import TernaryWeight
from .report import Check, VerifyReport

RECIPES_OF = {"hf-packed": HF_PACKED_RECIPES, "gguf": GGUF_RECIPES}


@dataclass
class _Attempt:
    recipe: Recipe
    report: VerifyReport
    layout: str | None = None  # the I2_S layout tried, when the file records none

    @property
    def score(self) -> tuple[int, int, int]:
        def total(name: str) -> int:
            return int(sum(c.figure or 0 for c in self.report.checks if c.name == name and not c.passed))

        scales = sum(1 for c in self.report.checks if c.name == "reproduce.scale" and not c.passed)
        return (total("reproduce.codes"), scales, len(self.report.failures))


def verify_reproduce(
    published: str | Path, master: str | Path, *, recipe: str = "auto", progress: Progress = no_progress
) -> VerifyReport:
    """Rebuild ``published`` from ``master`` with ``recipe`` (or each, with ``"auto"``) and compare."""
    pub = open_checkpoint(published)
    if pub.format not in RECIPES_OF:
        raise UsageError(f"--reproduce rebuilds hf-packed or gguf files; {published} is {pub.format}")
    allowed = RECIPES_OF[pub.format]
    if recipe == "auto":
        candidates = list(allowed)
    else:
        try:
            candidates = [Recipe(recipe)]
        except ValueError:
            raise UsageError(
                f"--recipe must be auto or one of {', '.join(r.value for r in allowed)}, got {recipe!r}"
            ) from None
        if candidates[0] not in allowed:
            raise UsageError(
                f"--recipe {recipe} does not write {pub.format}; it takes: {', '.join(r.value for r in allowed)}"
            )
    attempts: list[_Attempt] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bitconvert-reproduce-") as tmp:
        for layout in _layouts_to_try(pub):
            checked = pub if layout is None else _read_gguf_as(pub.path, layout)
            for r in candidates:
                attempt = _attempt(checked, master, r, layout, Path(tmp), skipped, progress)
                if attempt is not None:
                    attempts.append(attempt)
            if any(a.report.passed for a in attempts):
                break  # the bytes fit this layout: the others would only scramble them
    if not attempts:
        report = VerifyReport(str(published), mode="reproduce", against=str(master))
        report.add(Check("reproduce.recipe", False, "no recipe could rebuild it: " + "; ".join(skipped)))
        return report
    best = min(attempts, key=lambda a: a.score)
    report = best.report
    report.against = str(master)
    exact = report.passed
    matching = [a.recipe.value for a in attempts if a.report.passed]
    if len(matching) > 1:  # e.g. bitnet.cpp's folded scale equals the exact one for every tensor here
        detail = f"recipes {', '.join(matching)} reproduce it bit for bit (they agree on this master)"
    elif exact:
        detail = f"recipe {best.recipe.value} reproduces it bit for bit"
    else:
        detail = f"no recipe reproduces it; closest: {best.recipe.value}"
    report.checks.insert(0, Check("reproduce.recipe", exact, detail))
    report.figures["recipe"] = best.recipe.value
    report.figures["reproduced"] = exact
    report.figures["reproducing_recipes"] = matching
    if best.layout is not None:
        report.figures["i2s_layout"] = best.layout
        report.notes.append(f"the file records no I2_S layout; its bytes were compared as layout {best.layout}")
    report.figures["recipes"] = {
        a.recipe.value + (f" ({a.layout})" if a.layout else ""): {
            "codes_differing": a.score[0],
            "scales_differing": a.score[1],
            "failed_checks": a.score[2],
        }
        for a in attempts
    }
    report.notes += skipped
    return report


def _layouts_to_try(pub: Checkpoint) -> list[str | None]:
    """None (read as the file says), or each I2_S layout when the file records none and the bytes
    alone cannot tell (see formats/gguf/i2s_layouts.py)."""
    if not str(pub.info.get("i2s_layout", "")).endswith("(assumed: not recorded)"):
        return [None]
    from ..formats.gguf.i2s_layouts import LAYOUTS, layout_problem

    shapes = [tuple(e.shape) for n, e in pub.tensors.items() if pub.is_quantized_linear(n)]
    return [lay for lay in LAYOUTS if not any(layout_problem(lay, s) for s in shapes)]


def _read_gguf_as(path: Path, layout: str) -> Checkpoint:
    from ..formats.gguf.reader import GGUFReader

    return GGUFReader().read(Path(path), i2s_layout=layout)


def _attempt(
    pub: Checkpoint, master, recipe: Recipe, layout: str | None, tmp: Path, skipped: list[str], progress: Progress
) -> _Attempt | None:
    """PUBLISHED rebuilt with one recipe (and I2_S layout), compared; None (and a note) if it cannot be."""
    options = _options_like(pub, recipe)
    label = recipe.value + (f" ({layout})" if layout else "")
    if options is None:
        skipped.append(f"{label}: cannot write {pub.format} as stored here")
        return None
    if layout is not None:
        options["i2s_layout"] = layout
    out = tmp / (f"{recipe.value}-{layout}.gguf" if pub.format == "gguf" else recipe.value)
    try:
        convert(master, out, pub.format, options)
    except BitconvertError as exc:
        skipped.append(f"{label}: {exc}")
        return None
    return _Attempt(recipe, _compare(pub, open_checkpoint(out), progress), layout)


def _options_like(pub: Checkpoint, recipe: Recipe) -> dict[str, Any] | None:
    """Writer options that store what ``pub`` stores, with ``recipe``; None if the recipe cannot."""
    ternary = [e for n, e in pub.tensors.items() if pub.is_quantized_linear(n)]
    if pub.format == "hf-packed":
        dense = [e.dtype for e in pub.tensors.values() if not e.ternary]
        options: dict[str, Any] = {"recipe": recipe, "dtype": dense[0] if dense else torch.bfloat16}
        options["scale_dtype"] = ternary[0].dtype if ternary else torch.bfloat16
        options["linear_class"] = pub.source_linear_class()
        return options
    from ..formats.gguf.parser import GGUFFile

    f = GGUFFile(pub.path)
    types = {t.type_name for t in f.tensors.values()} & {"TQ1_0", "TQ2_0", "I2_S"}
    if len(types) != 1:
        return None
    gguf_type = types.pop().lower()
    if (recipe is Recipe.LLAMA_CPP and gguf_type == "i2_s") or (recipe is Recipe.BITNET_CPP and gguf_type != "i2_s"):
        return None  # llama.cpp's converter writes TQ types only, bitnet.cpp's I2_S only
    options = {"recipe": recipe, "gguf_type": gguf_type}
    embed = f.tensors.get("token_embd.weight")
    if embed is not None and embed.type_name.lower() in ("f16", "bf16", "f32", "q8_0"):
        options["embed_type"] = embed.type_name.lower()
    if gguf_type == "i2_s":
        options["i2s_layout"] = str(pub.info.get("i2s_layout", "x86")).split(" ")[0]
    return options


def _compare(pub: Checkpoint, rebuilt: Checkpoint, progress: Progress) -> VerifyReport:
    report = VerifyReport(str(pub.path), mode="reproduce")
    raw = _raw_reader(pub, rebuilt)
    counterpart = _counterparts(pub, rebuilt)
    names = list(pub.tensors)
    for i, name in enumerate(names):
        progress(i, len(names), name)
        if counterpart.get(name) not in rebuilt.tensors:
            report.add(Check("reproduce.dense", False, "not in the rebuilt file", name))
            continue
        a, b = pub.tensors[name].load(), rebuilt.tensors[counterpart[name]].load()
        if pub.is_quantized_linear(name):
            _compare_ternary(name, a, b, report)
            if raw is not None:
                _compare_bytes(name, raw, report)
        else:
            _compare_dense(name, a, b, report)
        del a, b
    progress(len(names), len(names), "")
    report.figures["failed"] = len(report.failures)
    return report


def _counterparts(pub: Checkpoint, rebuilt: Checkpoint) -> dict[str, str]:
    """PUBLISHED's tensor names -> the rebuilt file's. GGUF files are matched by their GGUF names:
    a bitnet-b1.58 file without our config reads with 2B-4T names, a rebuilt 1bitLLM with its own."""
    if pub.format != "gguf":
        return {n: n for n in pub.tensors}
    from ..formats.gguf import names

    by_gguf = {names.to_gguf(n, rebuilt.config): n for n in rebuilt.tensors}
    return {n: by_gguf.get(names.to_gguf(n, pub.config), n) for n in pub.tensors}


def _compare_ternary(name: str, a: Value, b: Value, report: VerifyReport) -> None:
    if not isinstance(a, TernaryWeight) or not isinstance(b, TernaryWeight):
        which = "published" if not isinstance(a, TernaryWeight) else "rebuilt"
        report.add(Check("reproduce.codes", False, f"{which} tensor is no set of codes with one scale", name))
        return
    report.add(_degenerate_check(name, a))
    diff = a.codes != b.codes
    n = int(diff.sum())
    if n:
        pos = [int(x) for x in torch.nonzero(diff)[0]]
        first = f"{pos}: published {int(a.codes[tuple(pos)])}, rebuilt {int(b.codes[tuple(pos)])}"
        detail = f"codes differ: {n} of {diff.numel()} (first at {first})"
    else:
        detail = f"all {diff.numel()} codes identical"
    report.add(Check("reproduce.codes", n == 0, detail, name, float(n), 0.0))
    sa, sb = a.scale, b.scale
    if sb.linear_class is not sa.linear_class or sb.dtype != sa.dtype:
        sb = sb.to(sa.linear_class, sa.dtype)
    same = torch.equal(sa.value.reshape(1), sb.value.reshape(1))
    rel = 0.0 if same else abs(sa.item() - sb.item()) / abs(sb.item() or 1.0)
    how = f"{sa.linear_class.value} {dtype_name(sa.dtype)}"
    detail = (
        f"scale identical ({how})"
        if same
        else f"scale differs: published {sa.item():.9g}, rebuilt {sb.item():.9g} ({how})"
    )
    report.add(Check("reproduce.scale", same, detail, name, rel, 0.0))


def _degenerate_check(name: str, w: TernaryWeight) -> Check:
    codes = w.codes.reshape(-1)
    first = int(codes[0]) if codes.numel() else 0
    constant = codes.numel() > 0 and bool((codes == first).all())
    if not constant:
        return Check("reproduce.nondegenerate", True, "codes take more than one value", name)
    what = "all zero" if first == 0 else f"constant: every code is {first:+d}"
    return Check("reproduce.nondegenerate", False, f"tensor {what}", name)


def _compare_dense(name: str, a: Value, b: Value, report: VerifyReport) -> None:
    if isinstance(a, TernaryWeight) or isinstance(b, TernaryWeight):
        report.add(Check("reproduce.dense", False, "stored ternary in one file and dense in the other", name))
        return
    same = a.dtype == b.dtype and torch.equal(a, b)
    worst = 0.0 if same else float((a.double() - b.to(a.dtype).double()).abs().max())
    detail = (
        "identical"
        if same
        else f"values differ (max abs diff {worst:.6g}; {dtype_name(a.dtype)} vs {dtype_name(b.dtype)})"
    )
    report.add(Check("reproduce.dense", same, detail, name, worst, 0.0))


# --- GGUF: the stored bytes, which also hold what codes + scale do not (block d of zeros, padding) --


@dataclass
class _RawPair:
    pub: Any
    rebuilt: Any
    names: dict[str, str]  # HF name -> GGUF name


def _raw_reader(pub: Checkpoint, rebuilt: Checkpoint) -> _RawPair | None:
    if pub.format != "gguf":
        return None  # hf-packed bytes follow from codes + scale: packing is canonical
    from ..formats.gguf import names
    from ..formats.gguf.parser import GGUFFile

    return _RawPair(GGUFFile(pub.path), GGUFFile(rebuilt.path), {n: names.to_gguf(n, pub.config) for n in pub.tensors})


def _compare_bytes(name: str, raw: _RawPair, report: VerifyReport) -> None:
    gname = raw.names[name]
    try:
        a, b = raw.pub.read_raw(gname), raw.rebuilt.read_raw(gname)
    except (KeyError, CheckpointError) as exc:
        report.add(Check("reproduce.bytes", False, f"cannot read stored bytes: {exc}", name))
        return
    n = min(a.numel(), b.numel())
    diff = torch.nonzero(a[:n] != b[:n])
    if a.numel() == b.numel() and diff.numel() == 0:
        report.add(Check("reproduce.bytes", True, f"all {n} stored bytes identical", name))
        return
    first = int(diff[0]) if diff.numel() else n
    detail = f"{int(diff.numel())} of {n} stored bytes differ (first at byte {first})"
    report.add(Check("reproduce.bytes", False, detail, name, float(diff.numel()), 0.0))
