"""Run a Python job in a fresh process and measure its own peak RSS (VmHWM), wall time included.

``wait4``'s ru_maxrss is no use here: Linux carries the parent's high-water mark across fork and
exec, so a child of a big process reports the parent's size. VmHWM of the child's own address
space, read as it exits, is the child's real peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

_PRELUDE = """
import atexit, sys
def _report(path=sys.argv.pop(1)):
    hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))
    open(path, 'w').write(hwm.split()[1])
atexit.register(_report)
"""


def run_measured(code: str, *args: str, env: dict | None = None) -> dict:
    """Run ``code`` (with ``sys.argv[1:] == args``); return wall and CPU seconds, peak RSS MB and exit code."""
    fd, report = tempfile.mkstemp(prefix="bitconvert-hwm-")
    os.close(fd)
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _PRELUDE + code, report, *args],
                                stdout=subprocess.DEVNULL, stderr=errors, env=env)  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)  # CPU time of the child alone (its maxrss is not: see above)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        stderr = errors.read().decode(errors="replace")
    try:
        with open(report) as f:
            kb = int(f.read() or 0)
    finally:
        os.unlink(report)
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(kb / 1024, 1), "returncode": proc.returncode, "stderr": stderr[-2000:]}


BITCONVERT = "import sys\nfrom bitconvert.cli import main\nsys.argv[0] = 'bitconvert'\nmain()\n"


def run_bitconvert(*args: str) -> dict:
    return run_measured(BITCONVERT, *map(str, args))


if __name__ == "__main__":
    print(json.dumps(run_bitconvert(*sys.argv[1:])))
