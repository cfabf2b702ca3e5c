"""examples/digits.py: killed with SIGKILL in mid-study, re-run, interrupted trials resume."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="examples/digits.py needs scikit-learn (the [examples] extra)")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits.py"


def _running_with_checkpoint(db: Path, artifacts: Path) -> list[int]:
    """Trials that are running and already have a committed checkpoint."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            rows = conn.execute("SELECT idx FROM trials WHERE status = 'running'").fetchall()
    except sqlite3.OperationalError:
        return []
    out = []
    for (idx,) in rows:
        ck = artifacts / f"trial_{idx:05d}" / "checkpoints"
        if ck.is_dir() and any(n.startswith("step_") for n in os.listdir(ck)):
            out.append(idx)
    return out


@pytest.mark.slow
def test_digits_example_resumes_after_sigkill(tmp_path):
    db = tmp_path / "db" / "studies.db"
    artifacts = tmp_path / "db" / "studies_artifacts" / "digits-optimizer"
    cmd = [sys.executable, str(EXAMPLE), "--trials", "4", "--workers", "2", "--steps", "200",
           "--eval-every", "20", "--storage", f"sqlite:///{db}", "--out", str(tmp_path / "out"),
           "--heartbeat-timeout", "5"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    first = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True, env=env)
    interrupted: list[int] = []
    deadline = time.time() + 600
    try:
        while time.time() < deadline and first.poll() is None:
            interrupted = _running_with_checkpoint(db, artifacts)
            if interrupted:
                break
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the study process and its worker processes
        first.wait()
    assert interrupted, "no trial was caught running with a checkpoint"

    second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (tmp_path / "out" / "report.html").is_file()
    assert "report:" in second.stdout

    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT idx, attempts FROM trials WHERE status = 'complete'").fetchall())
        steps = {i: [s for (s,) in conn.execute(
            "SELECT DISTINCT step FROM metrics WHERE idx = ? ORDER BY step", (i,))] for i in rows}
    assert sorted(rows) == [0, 1, 2, 3]
    for idx in interrupted:
        assert rows[idx] == 2, (idx, rows)
        lines = [json.loads(line) for line in
                 (artifacts / f"trial_{idx:05d}" / "attempts.jsonl").read_text().splitlines()]
        starts = [x["start"] for x in lines if "start" in x]
        assert len(starts) == 2 and starts[0] == 0 and starts[1] > 0  # continued from its checkpoint
        resumed_pid = [x["pid"] for x in lines if "start" in x][1]
        (first_report,) = [x["first_report"] for x in lines if "first_report" in x and x["pid"] == resumed_pid]
        assert first_report >= starts[1] > 0
        # one point per evaluation, no duplicates, from the start of the first attempt to the end
        assert steps[idx] == list(range(19, 200, 20)), steps[idx]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Resumed trials" in html
