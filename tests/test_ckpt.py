"""playbook.ckpt.CheckpointManager: round trips, bitwise resume, retention, corruption, safety."""

from __future__ import annotations

import json
import math
import os
import random
import time
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import playbook
from playbook import ckpt, schedules
from playbook.ckpt import CheckpointManager, CheckpointWarning, CorruptCheckpointError

ROOT = Path(__file__).resolve().parents[1]


def _model(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(8, 3))
    return m.to(dtype)


def _train_step(model, opt, sched=None, scaler=None, dtype=torch.float32):
    x = torch.randn(5, 6, dtype=dtype)
    y = torch.randint(0, 3, (5,))
    loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    opt.zero_grad()
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    if sched is not None:
        sched.step()
    return loss


def _assert_state_equal(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=path)
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _assert_state_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_state_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b, path


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("opt_cls", ["torch.Adam", "playbook.Adam", "playbook.SGD"])
def test_round_trip_model_optimizer_scheduler_scaler_rng(tmp_path, dtype, opt_cls):
    model = _model(0, dtype)
    if opt_cls == "torch.Adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    elif opt_cls == "playbook.Adam":
        opt = playbook.optim.Adam(model.parameters(), lr=1e-2, max_grad_norm=1.0)
    else:
        opt = playbook.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True, max_grad_norm=1.0)
    sched = schedules.scheduler(opt, schedules.warmup(schedules.cosine_decay(20), 3))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for _ in range(4):
        _train_step(model, opt, sched, scaler, dtype)
    mgr = CheckpointManager(tmp_path / "run")
    objects = {"model": model, "optimizer": opt, "scheduler": sched, "scaler": scaler, "rng": ckpt.rng_state()}
    expected = {k: v.state_dict() for k, v in objects.items()}
    mgr.save(4, objects, metrics={"val": 0.5})
    # The file holds exactly what the objects' state dicts held (dtype included: bf16 stays bf16).
    _assert_state_equal(expected, mgr.restore("latest"))
    assert mgr.restored_step == 4

    # Restore into fresh objects: every state dict matches, and the RNGs continue identically.
    model2 = _model(1, dtype)
    opt2 = type(opt)(model2.parameters(), **{k: v for k, v in opt.defaults.items() if k in ("lr",)})
    sched2 = schedules.scheduler(opt2, schedules.warmup(schedules.cosine_decay(20), 3))
    scaler2 = torch.amp.GradScaler("cpu")
    torch.manual_seed(123)
    np.random.seed(7)
    random.seed(9)
    a = (torch.rand(3), np.random.rand(2), random.random())
    assert mgr.restore_into(model=model2, optimizer=opt2, scheduler=sched2, scaler=scaler2, rng=ckpt.rng_state()) == 5
    b = (torch.rand(3), np.random.rand(2), random.random())
    ckpt.rng_state().load_state_dict(expected["rng"])
    c = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(b[0], c[0]) and np.array_equal(b[1], c[1]) and b[2] == c[2]
    assert not torch.equal(a[0], b[0])
    for name, obj in {"model": model2, "optimizer": opt2, "scheduler": sched2, "scaler": scaler2}.items():
        _assert_state_equal(expected[name], obj.state_dict(), name)


def test_continuing_after_restore_equals_uninterrupted_run_bitwise(tmp_path):
    def make():
        model = _model(0)
        opt = playbook.optim.Adam(model.parameters(), lr=3e-3, max_grad_norm=0.5)
        sched = schedules.scheduler(opt, schedules.warmup(schedules.linear_decay(30), 5))
        return model, opt, sched

    torch.manual_seed(42)
    model, opt, sched = make()
    for _ in range(40):
        _train_step(model, opt, sched)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(42)
    model, opt, sched = make()
    mgr = CheckpointManager(tmp_path / "run", metric="loss")
    for step in range(17):
        loss = _train_step(model, opt, sched)
        if step % 4 == 0:
            mgr.save(step, {"model": model, "optimizer": opt, "scheduler": sched, "rng": ckpt.rng_state()},
                     metrics={"loss": loss.item()})
    del model, opt, sched  # "crash" after step 16: the last checkpoint is step 16
    torch.manual_seed(999)  # a new process would have other RNG states
    model, opt, sched = make()
    start = mgr.restore_into(model=model, optimizer=opt, scheduler=sched, rng=ckpt.rng_state())
    assert start == 17
    for _ in range(start, 40):
        _train_step(model, opt, sched)
    for k, v in model.state_dict().items():
        assert torch.equal(v, reference[k]), k


def test_restore_into_fresh_directory_returns_zero_and_touches_nothing(tmp_path):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mgr = CheckpointManager(tmp_path / "nothing-yet")
    assert mgr.restore_into(model=model) == 0
    assert mgr.steps() == [] and mgr.latest_step() is None
    _assert_state_equal(before, model.state_dict())
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        mgr.restore()
    assert not (tmp_path / "nothing-yet").exists()  # created at the first save only


def test_restore_into_missing_key_or_bad_target_loads_nothing(tmp_path):
    mgr = CheckpointManager(tmp_path)
    model, other = _model(0), _model(1)
    mgr.save(3, {"model": model})
    before = {k: v.clone() for k, v in other.state_dict().items()}
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    with pytest.raises(KeyError, match=r"\['optimizer'\]"):
        mgr.restore_into(model=other, optimizer=opt)
    _assert_state_equal(before, other.state_dict())
    with pytest.raises(TypeError, match="load_state_dict"):
        mgr.restore_into(model=other, note="hello")
    _assert_state_equal(before, other.state_dict())
    t = torch.zeros(4)
    mgr.save(4, {"t": torch.arange(4.0)})
    assert mgr.restore_into(t=t) == 5 and torch.equal(t, torch.arange(4.0))


def test_shared_storages_and_views_survive(tmp_path):
    base = torch.arange(10.0)
    state = {"a": base, "view": base[2:5], "tied": {"w": base}}
    mgr = CheckpointManager(tmp_path, keep_latest=None)
    mgr.save(0, state)
    got = mgr.restore(0)
    assert torch.equal(got["view"], base[2:5])
    got["a"][3] = -1.0  # still one storage after loading
    assert got["view"][1] == -1.0 and got["tied"]["w"][3] == -1.0


def test_manifest_records_sizes_checksums_and_metrics(tmp_path):
    import hashlib

    mgr = CheckpointManager(tmp_path, metric="val_error")
    mgr.save(1200, {"x": torch.ones(3)}, metrics={"val_error": 0.25, "loss": float("nan")})
    d = tmp_path / "step_00001200"
    manifest = json.loads((d / "manifest.json").read_text())
    data = (d / "state.pt").read_bytes()
    assert manifest["step"] == 1200
    assert manifest["files"]["state.pt"] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert mgr.metrics(1200)["val_error"] == 0.25 and math.isnan(mgr.metrics(1200)["loss"])
    assert sorted(os.listdir(tmp_path)) == ["step_00001200"]  # no temporary left behind
    with pytest.raises(ValueError, match="No checkpoint for step 5"):
        mgr.metrics(5)


# -- retention -----------------------------------------------------------------------------------


def _steps_after(tmp_path, metric_values, **kw):
    mgr = CheckpointManager(tmp_path, metric="m", **kw)
    for step, v in enumerate(metric_values):
        mgr.save(step, {"s": torch.tensor([step])}, metrics={} if v is None else {"m": v})
    return mgr


def _reference_keep(values, mode, keep_best, keep_latest):
    """Independent statement of the rule: best by value (non-finite/missing worst, ties earlier) + newest."""
    n = len(values)
    worst = math.inf

    def rank(i):
        v = values[i]
        ok = v is not None and math.isfinite(v)
        return (0 if ok else 1, (v if mode == "min" else -v) if ok else worst, i)

    best = sorted(range(n), key=rank)[:keep_best]
    latest = list(range(n))[n - keep_latest:] if keep_latest else []
    return sorted(set(best) | set(latest))


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("keep_best,keep_latest", [(1, 1), (2, 1), (3, 0), (0, 2)])
def test_retention_with_nan_inf_missing_metrics_and_ties(tmp_path, mode, keep_best, keep_latest):
    values = [0.5, float("nan"), 0.2, 0.2, None, float("inf"), 0.9, float("-inf"), 0.2, 0.7]
    mgr = _steps_after(tmp_path, values, mode=mode, keep_best=keep_best, keep_latest=keep_latest)
    assert mgr.steps() == _reference_keep(values, mode, keep_best, keep_latest)
    finite = [i for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    best = min(finite, key=lambda i: ((values[i] if mode == "min" else -values[i]), i))
    assert mgr.best_step() == (best if keep_best else mgr.best_step())
    if keep_best:
        assert mgr.restore("best")["s"].item() == best


def test_best_step_none_without_finite_metric_and_errors_without_metric(tmp_path):
    mgr = _steps_after(tmp_path / "a", [float("nan"), None], keep_best=1, keep_latest=1)
    assert mgr.best_step() is None
    with pytest.raises(FileNotFoundError, match="finite 'm'"):
        mgr.restore("best")
    plain = CheckpointManager(tmp_path / "b")
    plain.save(0, {"x": 1})
    with pytest.raises(ValueError, match="has no metric"):
        plain.best_step()


def test_keep_latest_none_keeps_everything_and_rollback_drops_the_future(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_latest=None)
    for s in range(5):
        mgr.save(s * 10, {"s": s})
    assert mgr.steps() == [0, 10, 20, 30, 40]
    mgr.save(15, {"s": 1.5})  # resumed from step 10: 20..40 belong to the abandoned run
    assert mgr.steps() == [0, 10, 15]
    mgr.save(15, {"s": 2.5})  # re-saving a step replaces it atomically
    assert mgr.restore(15)["s"] == 2.5 and mgr.steps() == [0, 10, 15]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "best"}, "Unknown mode"),
        ({"keep_best": -1}, "keep_best"),
        ({"keep_latest": 1.5}, "keep_latest"),
        ({"keep_latest": 0}, "deleted right after"),
        ({"metric": ""}, "metric"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        CheckpointManager(tmp_path, **kwargs)


def test_invalid_save_arguments_write_nothing(tmp_path):
    mgr = CheckpointManager(tmp_path)
    with pytest.raises(ValueError, match="step"):
        mgr.save(-1, {"x": 1})
    with pytest.raises(ValueError, match="metric val="):
        mgr.save(1, {"x": 1}, metrics={"val": "low"})
    with pytest.raises(TypeError, match="keys must be non-empty strings"):
        mgr.save(1, {3: torch.ones(1)})
    with pytest.raises(TypeError, match="dict"):
        mgr.save(1, [torch.ones(1)])
    assert os.listdir(tmp_path) == []


# -- weights-only safety -------------------------------------------------------------------------


class _Custom:
    def __init__(self):
        self.x = 1


def test_save_rejects_what_weights_only_loading_cannot_read_naming_the_key(tmp_path):
    mgr = CheckpointManager(tmp_path)
    with pytest.raises(TypeError, match=r"key 'extra\.items\.1' holds a .*_Custom"):
        mgr.save(0, {"model": _model(), "extra": {"items": [1, _Custom()]}})
    with pytest.raises(TypeError, match=r"key 'arr' holds a numpy.ndarray"):
        mgr.save(0, {"arr": np.zeros(3)})
    with pytest.raises(TypeError, match=r"key 'f'"):
        mgr.save(0, {"f": lambda x: x})
    assert mgr.steps() == [] and not any(tmp_path.iterdir())
    # registering the class with torch makes it loadable, and then the save goes through
    with torch.serialization.safe_globals([_Custom]):
        mgr.save(1, {"obj": _Custom()})
        assert isinstance(mgr.restore(1)["obj"], _Custom)


_MARKER_CODE = "__import__('pathlib').Path({marker!r}).write_text('pwned')"


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (_MARKER_CODE.format(marker=self.marker),))


def _forge(path: Path, payload) -> None:
    """Write ``payload`` with plain torch.save into checkpoint ``path`` and fix up its manifest so the
    checksums match: what an attacker with write access to the directory could do."""
    import hashlib

    state = path / "state.pt"
    torch.save(payload, state)
    data = state.read_bytes()
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["state.pt"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    manifest["checksum"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_a_pickled_custom_class_cannot_execute_on_load(tmp_path):
    marker = tmp_path / "executed.txt"
    # plain torch.load without weights_only would run it: the payload is live
    probe = tmp_path / "probe.pt"
    torch.save({"x": _Evil(str(tmp_path / "probe_ran.txt"))}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "probe_ran.txt").exists()

    mgr = CheckpointManager(tmp_path / "run", keep_latest=None)
    mgr.save(1, {"model": _model()})
    mgr.save(2, {"model": _model()})
    _forge(tmp_path / "run" / "step_00000002", {"model": _Evil(str(marker))})
    with pytest.raises(CorruptCheckpointError, match="weights_only=True"):
        mgr.restore(2)
    with pytest.warns(CheckpointWarning, match="step_00000002"):
        assert mgr.restore_into(model=_model(5)) == 2  # falls back to step 1
    assert not marker.exists()


# -- corruption ----------------------------------------------------------------------------------


def _three(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_latest=None)
    for s in range(3):
        mgr.save(s, {"w": torch.full((1000,), float(s))})
    return mgr


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_corrupt_latest_is_detected_and_skipped_with_a_warning(tmp_path, damage):
    mgr = _three(tmp_path)
    d = tmp_path / "step_00000002"
    f = d / "state.pt"
    if damage == "flip":
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0x01
        f.write_bytes(bytes(data))
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:-100])
    elif damage == "delete":
        f.unlink()
    else:
        m = (d / "manifest.json").read_text()
        (d / "manifest.json").write_text(m.replace("state.pt", "state.pu", 1))
    with pytest.warns(CheckpointWarning, match="step_00000002"):
        got = mgr.restore("latest")
    assert mgr.restored_step == 1 and torch.equal(got["w"], torch.full((1000,), 1.0))
    if damage != "manifest":
        with pytest.raises(CorruptCheckpointError, match="step_00000002"):
            mgr.restore(2)
    else:
        assert mgr.steps() == [0, 1]  # a checkpoint without a valid manifest does not exist


def test_every_checkpoint_corrupt_raises_and_restore_into_starts_afresh(tmp_path):
    mgr = _three(tmp_path)
    for s in range(3):
        (tmp_path / f"step_{s:08d}" / "state.pt").write_bytes(b"garbage")
    with pytest.warns(CheckpointWarning):
        with pytest.raises(CorruptCheckpointError, match="No valid checkpoint"):
            mgr.restore()
    t = torch.zeros(1000)
    with pytest.warns(CheckpointWarning):
        assert mgr.restore_into(w=t) == 0
    assert torch.equal(t, torch.zeros(1000))


# -- async ---------------------------------------------------------------------------------------


def test_async_save_writes_the_same_bytes_as_sync_save(tmp_path):
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _train_step(model, opt)
    sync = CheckpointManager(tmp_path / "sync", metric="v")
    asy = CheckpointManager(tmp_path / "async", metric="v", async_save=True)
    expected = []
    for step in range(4):
        state = {"model": model, "optimizer": opt, "rng": ckpt.rng_state(), "meta": {"step": step}}
        sync.save(step, state, metrics={"v": 1.0 / (step + 1)})
        asy.save(step, state, metrics={"v": 1.0 / (step + 1)})
        expected.append({k: v.clone() for k, v in model.state_dict().items()})
        _train_step(model, opt)  # mutates the live tensors while the async write may be running
    asy.close()
    assert sync.steps() == asy.steps()
    for step in sync.steps():
        a = json.loads((tmp_path / "sync" / f"step_{step:08d}" / "manifest.json").read_text())
        b = json.loads((tmp_path / "async" / f"step_{step:08d}" / "manifest.json").read_text())
        assert a["files"] == b["files"] and a["metrics"] == b["metrics"]
        _assert_state_equal(expected[step], asy.restore(step)["model"])


def _make_unwritable(path: Path):
    """Make ``path`` unwritable for this process, really: chmod for a normal user, the immutable
    attribute for root (chmod does not stop root). Returns an undo callable."""
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        return lambda: os.chmod(path, 0o755)
    r = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"running as root and chattr +i is unavailable here ({r.stderr.strip()})")
    return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_unwritable_directory_raises_clear_error_and_keeps_earlier_checkpoints(tmp_path, async_save):
    run = tmp_path / "run"
    mgr = CheckpointManager(run, keep_latest=1, async_save=async_save)
    mgr.save(1, {"w": torch.ones(10)})
    mgr.wait()
    undo = _make_unwritable(run)
    try:
        if async_save:
            mgr.save(2, {"w": torch.zeros(10)})  # accepted; the background write fails
            with pytest.raises(OSError, match=r"Could not write checkpoint step 2 into .*run.*earlier checkpoints are untouched"):
                mgr.wait()
            mgr.save(3, {"w": torch.zeros(10)})
            with pytest.raises(OSError, match="step 3"):
                mgr.close()
        else:
            with pytest.raises(PermissionError, match=r"Could not write checkpoint step 2 into .*run"):
                mgr.save(2, {"w": torch.zeros(10)})
    finally:
        undo()
    assert mgr.steps() == [1]
    assert sorted(os.listdir(run)) == ["step_00000001"]
    assert torch.equal(mgr.restore("latest")["w"], torch.ones(10))


_FULL_DISK_CHILD = r"""
import os, resource, signal, sys, torch
from playbook.ckpt import CheckpointManager
mgr = CheckpointManager(sys.argv[1], keep_latest=1, async_save=sys.argv[2] == "1")
mgr.save(1, {"w": torch.ones(1000)})
mgr.wait()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)        # a failed write raises instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # files may not grow beyond 200 kB
try:
    mgr.save(2, {"w": torch.zeros(1_000_000)})         # 4 MB: the write fails like on a full disk
    mgr.wait()
except OSError as exc:
    print("ERROR", type(exc).__name__, exc)
    sys.exit(0)
print("NO ERROR")
sys.exit(1)
"""


@pytest.mark.parametrize("async_save", ["0", "1"], ids=["sync", "async"])
def test_full_disk_leaves_earlier_checkpoints_intact(tmp_path, async_save):
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", _FULL_DISK_CHILD, str(run), async_save],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ERROR OSError" in r.stdout and "Could not write checkpoint step 2" in r.stdout
    assert "File too large" in r.stdout and "untouched" in r.stdout
    assert sorted(os.listdir(run)) == ["step_00000001"]  # the temporary directory is gone too
    mgr = CheckpointManager(run)
    assert mgr.steps() == [1] and torch.equal(mgr.restore()["w"], torch.ones(1000))


# -- kill -9 -------------------------------------------------------------------------------------

_KILL_CHILD = r"""
import sys, torch
from playbook.ckpt import CheckpointManager
mgr = CheckpointManager(sys.argv[1], metric="m", keep_best=2, keep_latest=2)
start = mgr.restore_into(w=torch.zeros(500_000)) if mgr.steps() else 0
print("READY", start, flush=True)
for step in range(start, 50):
    w = torch.full((500_000,), float(step))      # 2 MB: the write takes a while
    print("SAVING", step, flush=True)
    mgr.save(step, {"w": w, "step": step}, metrics={"m": (step * 37) % 11})
print("DONE", flush=True)
"""


@pytest.mark.slow
def test_sigkill_at_random_points_of_50_saves_always_leaves_a_loadable_latest(tmp_path):
    import select
    import signal

    run = tmp_path / "run"
    rng = random.Random(1234)
    kills = 0
    for attempt in range(8):
        proc = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, str(run)], stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        assert line.startswith("READY"), line
        # kill during (or just after) the save of a random step: reach it, then a random delay
        start = int(line.split()[1])
        target = min(start + rng.randint(0, 6), 49) if start < 50 else 50  # 50: wait for DONE
        done = False
        for out in proc.stdout:
            if out.startswith("DONE"):
                done = True
                break
            if out.startswith("SAVING") and int(out.split()[1]) >= target:
                break
        if done:
            proc.wait()
            proc.stdout.close()
            break
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        kills += 1
        mgr = CheckpointManager(run, metric="m", keep_best=2, keep_latest=2)
        latest = mgr.latest_step()
        if latest is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no corrupt checkpoint: a kill never leaves one
            state = mgr.restore("latest")
        assert mgr.restored_step == latest and state["step"] == latest
        assert torch.equal(state["w"], torch.full((500_000,), float(latest)))
        assert len(mgr.steps()) <= 5  # 2 best + 2 latest, + 1 if killed between commit and retention
    assert kills >= 3  # most runs were killed mid-way
    mgr = CheckpointManager(run, metric="m", keep_best=2, keep_latest=2)
    assert not [n for n in os.listdir(run) if n.startswith(".tmp")]  # stale temporaries removed
    for step in mgr.steps():
        assert mgr.restore(step)["step"] == step


# -- torch.distributed ---------------------------------------------------------------------------

_DIST_CHILD = r"""
import os, sys, torch, torch.distributed as dist
from playbook.ckpt import CheckpointManager
rank = int(sys.argv[2])
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[3], rank=rank, world_size=2)
mgr = CheckpointManager(sys.argv[1])
bn = torch.nn.BatchNorm1d(2)
bn.running_mean.fill_(rank + 1.0)               # ranks saw different batches
for buf in (bn.running_mean, bn.running_var):   # README: synchronize the EMAs before saving
    dist.all_reduce(buf)
    buf /= dist.get_world_size()
mgr.save(7, {"w": torch.full((4,), float(rank + 1)), "rank": rank, "bn": bn})
dist.barrier()
state = mgr.restore("latest")
fresh = torch.nn.BatchNorm1d(2)
CheckpointManager(sys.argv[1]).restore_into(bn=fresh)
print("RESTORED", rank, state["rank"], state["w"].tolist(), fresh.running_mean.tolist(),
      sorted(os.listdir(sys.argv[1])), flush=True)
dist.destroy_process_group()
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_only_rank_zero_writes_every_rank_restores(tmp_path):
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", _DIST_CHILD, str(tmp_path), str(r), port],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    lines = sorted(line for out, _ in outs for line in out.splitlines() if line.startswith("RESTORED"))
    assert lines == [
        "RESTORED 0 0 [1.0, 1.0, 1.0, 1.0] [1.5, 1.5] ['step_00000007']",
        "RESTORED 1 0 [1.0, 1.0, 1.0, 1.0] [1.5, 1.5] ['step_00000007']",
    ]


def test_stale_temporaries_of_dead_writers_are_cleaned(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, {"x": 1})
    import socket

    host = socket.gethostname().replace("-", "_")
    # pid 2**22 + 1 is above Linux's pid_max default: certainly not a live process
    dead = 2**22 + 1
    (tmp_path / f".tmp-step_00000002-{host}-{dead}-0123abcd").mkdir()
    (tmp_path / f".del-step_00000000-{host}-{dead}-0123abcd").mkdir()
    os.rename(tmp_path / "step_00000001", tmp_path / f".old-step_00000001-{host}-{dead}-0123abcd")
    (tmp_path / f".tmp-step_00000003-otherhost-{dead}-0123abcd").mkdir()  # other host: left alone
    mgr = CheckpointManager(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [f".tmp-step_00000003-otherhost-{dead}-0123abcd", "step_00000001"]
    assert mgr.restore(1) == {"x": 1}
