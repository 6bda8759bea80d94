"""Another process holding a run's lock, as a second suite on the same folder would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import shutil, sys, time
from pathlib import Path
from ckd.common.files import held_lock
lock, saved, result, *others = sys.argv[1:]
with held_lock(lock):
    print("held", flush=True)
    deadline = time.monotonic() + 300
    while not all(Path(o).exists() for o in others) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # long enough for the other process to be waiting
    shutil.copy(saved, result)  # this process's run of it ends once the others are done
"""


def hold_finished_run(result: Path, lock: Path, others: list[Path] = ()) -> tuple[subprocess.Popen, Path]:
    """Move the finished ``result`` aside (to ``saved.json`` beside its folder) and :func:`hold` ``lock``
    as the process that is still running it; returns the holder and the saved copy."""
    saved = result.parent.with_name("saved.json")
    result.rename(saved)
    return hold(lock, saved, result, others), saved


def hold(lock: Path, saved: Path, result: Path, others: list[Path] = ()) -> subprocess.Popen:
    """A process that holds ``lock`` until every path of ``others`` exists, then puts ``saved``
    at ``result`` (its run's result) and lets go; returns once it holds the lock."""
    holder = subprocess.Popen([sys.executable, "-c", SCRIPT, str(lock), str(saved), str(result), *map(str, others)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder
