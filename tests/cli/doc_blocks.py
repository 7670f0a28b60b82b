"""Shell examples from the project's Markdown, and a place to run them as a user would.

A fenced block's info string says what an example needs: its first word is the language, its
second the marker (`offline`, `online`, `gpu`, `slow`, `synopsis`; see MARKERS). Offline examples
are run by the tests, as written, from a folder that looks like the repository root to them
(`fixtures/`, `benchmarks/` and the CI kit reachable, outputs landing in a temporary folder) with
`bitconvert` and `python3` on PATH resolving to this checkout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: what each marker promises; README.md's "Examples in these pages" says the same to users
MARKERS = {
    "offline": "runs from the repository root on the bundled fixtures; the tests run it as written",
    "online": "needs the network: the Hugging Face Hub (for uploads a token too), or PyPI",
    "gpu": "needs a CUDA GPU",
    "slow": "runs offline but takes minutes or gigabytes; not run by the tests",
    "synopsis": "usage with placeholders (SRC, OUT, ...), not meant to run as written",
}
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
#: what the repository root holds that examples may name, linked into each run's folder
REACHABLE = ("fixtures", "benchmarks", "action.yml", ".pre-commit-hooks.yaml")

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<ticks>`{3,})(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    marker: str | None
    body: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def looks_like_shell(self) -> bool:
        """A shell block by its language, or an unlabelled one whose lines start like commands."""
        if self.language in SHELL_LANGUAGES:
            return True
        starts = ("bitconvert ", "python ", "python3 ", "pip ", "$ ", "cd ", "pre-commit ")
        return self.language == "" and any(ln.lstrip().startswith(starts) for ln in self.body.splitlines())


def documents() -> list[Path]:
    """README.md and every page of docs/, the Markdown users read."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def fenced_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, words = len(m["indent"]), m["ticks"], m["info"].split()
        body, j = [], i + 1
        while j < len(lines) and lines[j].strip() != ticks:
            line = lines[j]
            body.append(line[indent:] if line[:indent].strip() == "" else line.lstrip())
            j += 1
        language = words[0] if words else ""
        blocks.append(Block(path, i + 1, language, words[1] if len(words) > 1 else None, "\n".join(body)))
        i = j + 1
    return blocks


def all_blocks() -> list[Block]:
    return [b for doc in documents() for b in fenced_blocks(doc)]


def commands(block: Block) -> list[str]:
    """The block's commands: continuation lines joined, blank and comment-only lines dropped."""
    out, pending = [], ""
    for raw in block.body.splitlines():
        line = raw.lstrip() if pending else raw.removeprefix("$ ")
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].rstrip() + " "
            continue
        line, pending = pending + line, ""
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(line.strip())
    assert not pending, f"{block.where}: a continuation line ends the block"
    return out


def is_pipeline(command: str) -> bool:
    """A `|` outside quotes and comments, and not part of `||`."""
    unquoted = re.sub(r"'[^']*'|\"[^\"]*\"", "", command)
    unquoted = re.sub(r"(^|\s)#.*$", "", unquoted)  # a trailing comment may say anything
    return re.search(r"(?<!\|)\|(?!\|)", unquoted) is not None


def user_folder(tmp: Path) -> tuple[Path, dict]:
    """A folder that stands in for the repository root, and an environment whose PATH has
    `bitconvert`, `python` and `python3` of this checkout first (no network: HF_HUB_OFFLINE)."""
    work, bin_dir = tmp / "work", tmp / "bin"
    work.mkdir(parents=True)
    bin_dir.mkdir(parents=True)
    for name in REACHABLE:
        if (ROOT / name).exists():
            (work / name).symlink_to(ROOT / name)
    shims = {"bitconvert": f'exec "{sys.executable}" -m bitconvert "$@"\n',
             "python": f'exec "{sys.executable}" "$@"\n', "python3": f'exec "{sys.executable}" "$@"\n'}
    for name, text in shims.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("COLUMNS", None)
    return work, env


def run_shell(command: str, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def expected_exit(command: str) -> int:
    """The exit status an example announces with a trailing `# exit N` comment; 0 without one."""
    m = re.search(r"#\s*exit\s+(\d+)\b[^#]*$", command)
    return int(m[1]) if m else 0
