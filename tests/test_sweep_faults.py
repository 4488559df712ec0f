"""Fault test of a sweep with real processes: `eureka-kit sweep` SIGKILLed (its whole process group) while a
grid point runs, then the same command again. Finished points must be skipped untouched, the interrupted
one must run again, and nothing may be duplicated or lost. docs/reliability.md lists what this guarantees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("nbformat")
pytest.importorskip("papermill")

from nbfactory import write_notebook  # noqa: E402

from eureka_kit.workbench import report, sweep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEYS = [f"x={x}" for x in (1, 2, 3, 4)]
KILLED = "x=3"


def _sleepy_notebook(path: Path) -> Path:
    """Each point writes its kernel's pid to `pid_dir/<x>.pid` (so the test knows the kernel is mid-cell and can
    reap it after the kill), sleeps, then shows a 'What this shows' line."""
    return write_notebook(
        path, 'x = 1\nsleep_s = 0.0\npid_dir = ""',
        "import os, time\nfrom pathlib import Path\n"
        "Path(pid_dir, f'{x}.pid').write_text(str(os.getpid()))\ntime.sleep(sleep_s)",
        "from IPython.display import Markdown\nMarkdown(f'**What this shows**: x = {x}')")


def _command(nb: Path, out: Path, pid_dir: Path) -> list[str]:
    cli = Path(sys.executable).parent / "eureka-kit"
    prefix = [str(cli)] if cli.exists() else [sys.executable, "-m", "eureka_kit.cli"]
    return prefix + ["sweep", str(nb), "--grid", "x=1,2,3,4", "-p", "sleep_s=1.5", f"pid_dir={pid_dir}",
                     "--out", str(out)]


def _status(out: Path, key: str) -> dict:
    return sweep.read_status(out / "sleepy" / key)


def _kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_sigkilled_sweep_reruns_only_the_interrupted_point_and_duplicates_nothing(tmp_path):
    nb = _sleepy_notebook(tmp_path / "sleepy.ipynb")
    out, pid_dir = tmp_path / "reports", tmp_path / "pids"
    pid_dir.mkdir()
    cmd = _command(nb, out, pid_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    # 1. Start the sweep in its own process group; kill -9 the group once point 3's kernel is inside its cell.
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    deadline = time.monotonic() + 240
    while not ((pid_dir / "3.pid").exists() and _status(out, KILLED).get("status") == "running"):
        if first.poll() is not None:
            pytest.fail(f"the sweep exited ({first.returncode}) before point 3 ran:\n{first.stdout.read()}")
        assert time.monotonic() < deadline, "point 3 did not start within 240 s"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    first.stdout.close()
    # Jupyter starts each kernel in a session of its own, so the group kill orphans point 3's kernel (ipykernel
    # notices its parent is gone within seconds and exits; killing it here keeps it from finishing the cell).
    killed_kernel = int((pid_dir / "3.pid").read_text())
    _kill_pid(killed_kernel)

    finished_before = ["x=1", "x=2"]
    assert [_status(out, k).get("status") for k in KEYS] == ["ok", "ok", "running", None]
    stamps = {(k, name): (out / "sleepy" / k / name).stat().st_mtime_ns
              for k in finished_before for name in (sweep.STATUS, sweep.EXECUTED, sweep.REPORT)}
    assert not (out / "sleepy" / "x=4").exists()

    # 2. The same command again: resumes.
    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "4/4 ok" in second.stdout

    # Finished points were skipped: not one of their files was rewritten.
    for (key, name), stamp in stamps.items():
        assert (out / "sleepy" / key / name).stat().st_mtime_ns == stamp, f"{key}/{name} was rewritten"
    # The interrupted point ran again, in a new kernel, and finished.
    assert int((pid_dir / "3.pid").read_text()) != killed_kernel
    assert _status(out, KILLED)["status"] == "ok" and sweep.is_finished(out / "sleepy" / KILLED)

    # Exactly one folder per point, each with exactly one executed notebook, report and status "ok".
    assert sorted(p.name for p in (out / "sleepy").iterdir()) == KEYS
    for key in KEYS:
        files = sorted(p.name for p in (out / "sleepy" / key).iterdir())
        assert files == sorted([sweep.EXECUTED, sweep.REPORT, sweep.STATUS]), (key, files)
        status = json.loads((out / "sleepy" / key / sweep.STATUS).read_text())
        assert status["status"] == "ok" and status["errors"] == [] and f"x={status['params']['x']}" == key
        assert not sweep.notebook_errors(out / "sleepy" / key / sweep.EXECUTED)
    # The index lists every point exactly once.
    assert [r["key"] for r in report.collect(out)] == KEYS
    index = (out / "index.html").read_text()
    assert "sleepy — 4/4 ok" in index
    for key in KEYS:
        assert index.count(f"sleepy/{key}/{sweep.REPORT}") == 1, key
