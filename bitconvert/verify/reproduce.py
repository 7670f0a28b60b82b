"""``verify PUBLISHED --reproduce MASTER``: is a published ternary file what its master says?

PUBLISHED's format is rebuilt from MASTER with a producer recipe (see :mod:`bitconvert.ternary.recipes`)
and PUBLISHED's own storage choices (scale dtype and convention, GGUF type, I2_S layout), in a
temporary directory, then compared tensor by tensor as stored:

- ``reproduce.codes``: the ternary codes (how many differ, the first position);
- ``reproduce.scale``: the scale bit for bit, in PUBLISHED's dtype and convention (by how much);
- ``reproduce.bytes`` (GGUF): the stored bytes, which also hold per-block ``d`` and padding;
- ``reproduce.nondegenerate``: a published weight whose codes are all zero or all one value;
- ``reproduce.dense``: embeddings and norms (and a master's float weights), value for value;
- ``reproduce.metadata`` (GGUF, a recipe that writes its producer's own keys): every key, its type,
  value and place, the vocabulary and pooling included.

With ``recipe="auto"`` every recipe the format takes is tried; the report is that of the recipe
that reproduces PUBLISHED bit for bit, or else of the closest one (fewest differing codes, then
scales), and names it. Nothing is printed; reuse :class:`VerifyReport` for JSON and JUnit.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..convert import convert
from ..dtypes import Dense
from ..errors import BitconvertError, CheckpointError, UsageError
from ..formats import Progress, no_progress, open_checkpoint, options_class
from ..formats.options import fields_of
from ..model.checkpoint import Checkpoint, Kind, Value
from ..ternary.recipes import RECIPES, Recipe, check_recipe, recipe_record, recipes_for
from ..ternary.weight import TernaryWeight
from .report import Check, VerifyReport
from .values import first_difference, max_abs_diff


@dataclass
class _Attempt:
    recipe: Recipe
    report: VerifyReport
    layout: str | None = None  # the I2_S layout tried, when the file records none

    @property
    def score(self) -> tuple[int, int, int]:
        codes = scales = failed = 0
        for c in self.report.checks:
            if not c.passed:
                failed += 1
                codes += int(c.figure or 0) if c.name == "reproduce.codes" else 0
                scales += c.name == "reproduce.scale"
        return (codes, scales, failed)


def _rebuilt_formats() -> str:
    """The formats some recipe writes, in the records' order (``hf-packed or gguf``)."""
    return " or ".join(dict.fromkeys(fmt for record in RECIPES.values() for fmt in record.writes))


def verify_reproduce(
    published: str | Path, master: str | Path, *, recipe: str = "auto", progress: Progress = no_progress
) -> VerifyReport:
    """Rebuild ``published`` from ``master`` with ``recipe`` (or each, with ``"auto"``) and compare."""
    pub = open_checkpoint(published)
    allowed = recipes_for(pub.format)
    if not allowed:
        raise UsageError(f"--reproduce rebuilds {_rebuilt_formats()} files; {published} is {pub.format}")
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
    gguf = pub.facts.gguf
    if gguf is None or gguf.i2s_layout is None or gguf.i2s_layout_recorded:
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
    label = recipe.value + (f" ({layout})" if layout else "")
    options = _options_like(pub, recipe)
    if options is None:
        skipped.append(f"{label}: cannot write {pub.format} as stored here")
        return None
    if layout is not None:
        options["i2s_layout"] = layout
    out = tmp / (f"{recipe.value}-{layout}.gguf" if pub.format == "gguf" else recipe.value)
    task = pub.config.family.task
    try:
        # the recipe's record refuses what its producer never writes (a type, a scale convention)
        check_recipe(recipe, pub.format, options, None, str(master), task)
        convert(master, out, pub.format, options)
    except BitconvertError as exc:
        skipped.append(f"{label}: {exc}")
        return None
    report = _compare(pub, open_checkpoint(out), progress)
    if pub.format == "gguf" and recipe_record(recipe, task).gguf_style.metadata != "bitconvert":
        report.checks.insert(0, _compare_metadata(pub.path, out))
    return _Attempt(recipe, report, layout)


def _options_like(pub: Checkpoint, recipe: Recipe) -> dict[str, Any] | None:
    """Writer options that store what ``pub`` stores, with ``recipe``; None if no writer setting can."""
    ternary = [e for n, e in pub.tensors.items() if pub.is_quantized_linear(n)]
    if pub.format != "gguf":
        dense = [e.dtype_name for e in pub.tensors.values() if e.kind is not Kind.TERNARY]
        options = {"recipe": recipe, "dtype": dense[0] if dense else "BF16",
                   "scale_dtype": ternary[0].dtype_name if ternary else "BF16",
                   "linear_class": pub.source_linear_class()}  # fmt: skip
        taken = fields_of(options_class(pub.format))  # what this writer has a setting for (bitnet-gpu: no scale options)
        return {k: v for k, v in options.items() if k in taken}
    from ..formats.gguf.names import to_gguf
    from ..formats.gguf.parser import GGUFFile

    f = GGUFFile(pub.path)
    types = {t.type_name for t in f.tensors.values()} & {"TQ1_0", "TQ2_0", "I2_S", "TL1", "TL2"}
    if not types:  # a master's floats: the type its quantized linears are stored in
        held = {to_gguf(n, pub.config) for n in pub.tensors if pub.is_quantized_linear(n)}
        types = {f.tensors[n].type_name for n in held if n in f.tensors} & {"F16", "BF16", "F32"}
    if len(types) != 1:
        return None
    # reproducing a producer that rounds (F16 norms, F16 embeddings) rounds as it does
    options: dict[str, Any] = {"recipe": recipe, "gguf_type": types.pop().lower(), "allow_lossy": True}
    if options["gguf_type"] in ("tl1", "tl2"):  # the tiles it was read with: recorded, or named when reading
        from ..formats.gguf.tl_files import kernels_for

        options["kernel_config"] = kernels_for(f, None, [])[0]
    embed = f.tensors.get("token_embd.weight")
    if embed is not None and embed.type_name.lower() in ("f16", "bf16", "f32", "q8_0"):
        options["embed_type"] = embed.type_name.lower()
    if options["gguf_type"] == "i2_s":
        options["i2s_layout"] = (pub.facts.gguf and pub.facts.gguf.i2s_layout) or "x86"
    return options


def _compare(pub: Checkpoint, rebuilt: Checkpoint, progress: Progress) -> VerifyReport:
    report = VerifyReport(str(pub.path), mode="reproduce")
    counterpart = _counterparts(pub, rebuilt)
    names = list(pub.tensors)
    for i, name in enumerate(names):
        progress(i, len(names), name)
        other = counterpart.get(name)
        if other not in rebuilt.tensors:
            report.add(Check("reproduce.dense", False, "not in the rebuilt file", name))
            continue
        a, b = pub.tensors[name].load(), rebuilt.tensors[other].load()
        if pub.is_quantized_linear(name) and not (isinstance(a, Dense) and isinstance(b, Dense)):
            _compare_ternary(name, a, b, report)
            if pub.format == "gguf":  # hf-packed bytes follow from codes + scale: packing is canonical
                _compare_bytes(name, pub, rebuilt, other, report)
        else:  # dense tensors, and a master's floats stored as floats
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
    n, first = first_difference(a.codes, b.codes)
    if n:
        where = f"{list(first)}: published {int(a.codes[first])}, rebuilt {int(b.codes[first])}"
        detail = f"codes differ: {n} of {a.codes.size} (first at {where})"
    else:
        detail = f"all {a.codes.size} codes identical"
    report.add(Check("reproduce.codes", n == 0, detail, name, float(n), 0.0))
    sa, sb = a.scale, b.scale.to(a.scale.linear_class, a.scale.dtype_name)
    same = sa.item() == sb.item()
    rel = 0.0 if same else abs(sa.item() - sb.item()) / abs(sb.item() or 1.0)
    how = f"{sa.linear_class.value} {sa.dtype_name}"
    detail = (
        f"scale identical ({how})"
        if same
        else f"scale differs: published {sa.item():.9g}, rebuilt {sb.item():.9g} ({how})"
    )
    report.add(Check("reproduce.scale", same, detail, name, rel, 0.0))


def _degenerate_check(name: str, w: TernaryWeight) -> Check:
    codes = w.codes.reshape(-1)
    first = int(codes[0]) if codes.size else 0
    constant = codes.size > 0 and not np.any(codes != first)
    if not constant:
        return Check("reproduce.nondegenerate", True, "codes take more than one value", name)
    what = "all zero" if first == 0 else f"constant: every code is {first:+d}"
    return Check("reproduce.nondegenerate", False, f"tensor {what}", name)


def _compare_dense(name: str, a: Value, b: Value, report: VerifyReport) -> None:
    if not isinstance(a, Dense) or not isinstance(b, Dense):
        report.add(Check("reproduce.dense", False, "stored ternary in one file and dense in the other", name))
        return
    if a.shape != b.shape:
        worst = float("inf")
    elif a.dtype_name == b.dtype_name and np.array_equal(a.data, b.data):
        worst = 0.0  # the same words: no arithmetic needed
    else:
        worst = max_abs_diff(a, b.to(a.dtype_name))
    same = a.dtype_name == b.dtype_name and worst == 0.0
    detail = "identical" if same else f"values differ (max abs diff {worst:.6g}; {a.dtype_name} vs {b.dtype_name})"
    report.add(Check("reproduce.dense", same, detail, name, worst, 0.0))


def _compare_metadata(published: Path, rebuilt: Path) -> Check:
    """Every GGUF key of PUBLISHED against the rebuilt file's: the same keys in the same order, each
    of the same type and value (token lists, scores and types included)."""
    from ..formats.gguf.parser import GGUFFile

    a, b = GGUFFile(published).metadata, GGUFFile(rebuilt).metadata
    for i, (ka, kb) in enumerate(zip(list(a), list(b))):
        if ka != kb:
            return Check("reproduce.metadata", False, f"key {i} is {ka!r} in the file, {kb!r} rebuilt")
        va, vb = a[ka], b[kb]
        same = va.type == vb.type and getattr(va, "item_type", None) == getattr(vb, "item_type", None)
        if same and isinstance(va.value, np.ndarray):
            same = isinstance(vb.value, np.ndarray) and va.value.tobytes() == vb.value.tobytes()
        elif same:
            same = va.value == vb.value
        if not same:
            return Check("reproduce.metadata", False, f"key {ka} differs: {str(va.value)[:60]!r} vs {str(vb.value)[:60]!r}")
    if len(a) != len(b):
        extra = list(a)[len(b) :] or list(b)[len(a) :]
        return Check("reproduce.metadata", False, f"{len(a)} keys in the file, {len(b)} rebuilt (first extra: {extra[0]})")
    return Check("reproduce.metadata", True, f"all {len(a)} keys identical (vocabulary and pooling included)")


# --- GGUF: the stored bytes, which also hold what codes + scale do not (block d of zeros, padding) --


def _compare_bytes(name: str, pub: Checkpoint, rebuilt: Checkpoint, other: str, report: VerifyReport) -> None:
    try:
        a, b = pub.tensors[name].stored().data, rebuilt.tensors[other].stored().data
    except CheckpointError as exc:
        report.add(Check("reproduce.bytes", False, f"cannot read stored bytes: {exc}", name))
        return
    pad = _padding(pub, name)
    n = min(a.size, b.size) - (pad if a.size == b.size else 0)
    differing, first = first_difference(a[:n], b[:n])
    padded = f" ({pad} padding bytes not compared)" if pad and a.size == b.size else ""
    if a.size == b.size and not differing:
        report.add(Check("reproduce.bytes", True, f"all {n} stored data bytes identical{padded}", name))
        return
    at = first[0] if first is not None else n
    detail = f"{differing} of {n} stored bytes differ (first at byte {at}){padded}"
    report.add(Check("reproduce.bytes", False, detail, name, float(differing), 0.0))


def _padding(ckpt: Checkpoint, name: str) -> int:
    """Trailing bytes of a GGUF tensor that carry no data (I2_S's after its scale), from the type table."""
    from ..formats.gguf.types import TYPES

    layout = ckpt.tensors[name].stored().layout
    found = next((t for t in TYPES.values() if layout == f"gguf:{t.name}"), None)
    return found.padding if found is not None else 0
