import json
import subprocess
import sys
import time

import pytest

from ckd.common.files import held_lock, write_json_atomic, write_text_atomic


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(ValueError):
        write_json_atomic(path, {"a": float("nan")})  # not valid JSON: refused
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_atomic_text_write_creates_the_folder_and_replaces_the_file(tmp_path):
    path = tmp_path / "new" / "summary.csv"
    assert write_text_atomic(path, "a,b\n") == path
    write_text_atomic(path, "a,b\r\n1,2\n")
    assert path.read_bytes() == b"a,b\r\n1,2\n"  # written as given: no newline translation
    assert [p.name for p in path.parent.iterdir()] == ["summary.csv"]


LOCK_HOLDER = """
import sys, time
from ckd.common.files import held_lock
with held_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    open(sys.argv[1] + ".done", "w").close()  # the last thing done while holding it
"""


def _hold_in_subprocess(lock, seconds):
    process = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(lock), str(seconds)], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "held"
    return process


@pytest.mark.skipif(sys.platform == "win32", reason="no advisory locks on Windows")
def test_a_held_lock_makes_another_process_wait_then_is_removed(tmp_path):
    lock = tmp_path / "r.lock"
    holder = _hold_in_subprocess(lock, 1.5)
    waits = []
    start = time.monotonic()
    with held_lock(lock, on_wait=lambda: waits.append(time.monotonic())):
        assert (tmp_path / "r.lock.done").exists()  # acquired only once the holder let go
        assert lock.exists()
    holder.wait()
    assert len(waits) == 1 and waits[0] - start < 1.0  # told at once that it waits, once
    assert time.monotonic() - start >= 1.0
    assert not lock.exists()  # removed on release


@pytest.mark.skipif(sys.platform == "win32", reason="no advisory locks on Windows")
def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    lock = tmp_path / "r.lock"
    holder = _hold_in_subprocess(lock, 60)
    holder.kill()
    holder.wait()
    assert lock.exists()  # the file stays, the lock died with its process
    waits = []
    with held_lock(lock, on_wait=lambda: waits.append(1)):
        pass
    assert waits == [] and not lock.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="no advisory locks on Windows")
def test_three_processes_hold_a_lock_one_at_a_time(tmp_path):
    # The first holder removes the file on release; the one waiting on the removed file must not
    # hold it while a newcomer holds the new file.
    lock, log = tmp_path / "r.lock", tmp_path / "log"
    script = """
import sys, time
from ckd.common.files import held_lock
for _ in range(5):
    with held_lock(sys.argv[1]):
        with open(sys.argv[2], "a") as f:
            f.write("in\\n"); f.flush(); time.sleep(0.02); f.write("out\\n")
"""
    workers = [subprocess.Popen([sys.executable, "-c", script, str(lock), str(log)]) for _ in range(3)]
    for w in workers:
        assert w.wait(timeout=120) == 0
    assert log.read_text().split() == ["in", "out"] * 15  # never two inside at once


def test_a_folder_made_for_a_lock_alone_is_removed_with_it(tmp_path):
    with held_lock(tmp_path / "new" / "r.lock"):
        assert (tmp_path / "new").is_dir()
    assert not (tmp_path / "new").exists()
    with held_lock(tmp_path / "kept" / "r.lock"):
        (tmp_path / "kept" / "r.json").write_text("{}")  # the run wrote its result there
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["r.json"]
