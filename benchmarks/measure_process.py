"""Run a command as a fresh whole process and write its wall time and peak RSS (``os.wait4``) as JSON.

Why a launcher: on Linux a process's ``ru_maxrss`` survives ``exec`` and starts from the memory of the process
that forked it, so a child forked straight from a benchmark that has already imported torch and run a ViT
would report the benchmark's own peak as its peak. This launcher is a bare Python (``-S``, stdlib only, about
10 MiB), so the measured command's peak includes at most that much inherited memory; the launcher records its
own RSS at spawn time (``launcher_rss_mib``) for reference.

Usage::

    python -S benchmarks/measure_process.py RESULT.json CMD [ARG ...]
"""

import json
import os
import subprocess
import sys
import time


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> int:
    out, cmd = sys.argv[1], sys.argv[2:]
    launcher = _rss_mib()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = rc = os.waitstatus_to_exitcode(status)
    with open(out, "w") as f:
        json.dump({"wall_s": wall, "maxrss_mib": ru.ru_maxrss / 1024, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
                   "rc": rc, "launcher_rss_mib": launcher}, f)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
