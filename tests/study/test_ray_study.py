"""Studies on a real Ray cluster on the loopback address: the same results as the local runner, a
killed worker or driver loses and duplicates nothing, bad input is one line with nothing written.

One cluster (a head with 2 CPUs: two worker processes) is started for the whole module, because a
Ray start takes tens of seconds; it is stopped when the module's tests end.
"""

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import excite
from excite.study.db import load_results
from excite.study.ray_runner import run_study_ray
from excite.study.runner import run_id, run_study
from excite.study.spec import load_study

SRC = str(Path(excite.__file__).resolve().parents[1])
# A cluster that only this test's processes on 127.0.0.1 use: no token to hand around.
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([SRC, *filter(None, [os.environ.get("PYTHONPATH")])])}

TOML = """
name = "ray-tiny"
models = ["resnet20"]
seeds = {seeds}
dataset = "digits"
recipe = {recipe}
baseline = "none"

[[variant]]
label = "none"
attention = "none"

[[variant]]
label = "eca"
attention = "eca"
attention_kwargs = {{ k_size = 3 }}
"""
SYNTHETIC = "excite.study.runner:synthetic_trainer"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """``HOST:PORT`` of a Ray head on 127.0.0.1 with 2 CPUs, started by ``ray start`` in its own
    process group (so that stopping it ends exactly its processes, never another Ray on this machine)."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--port", str(port),
           "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false",
           "--temp-dir", temp, "--disable-usage-stats"]
    log = open(Path(temp) / "head.log", "w+")
    head = subprocess.Popen(cmd, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        while "Ray runtime started" not in Path(log.name).read_text():
            assert head.poll() is None and time.time() < deadline, Path(log.name).read_text()[-3000:]
            time.sleep(0.5)
        with pytest.MonkeyPatch.context() as mp:  # this process connects as a driver too
            mp.setenv("RAY_AUTH_MODE", "disabled")
            yield f"127.0.0.1:{port}"
    finally:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _toml(tmp_path, *, seeds="[0, 1]", recipe="{ toy_sleep = 2.0 }") -> Path:
    p = tmp_path / "study.toml"
    p.write_text(TOML.format(seeds=seeds, recipe=recipe))
    return p


def _keys(folder: Path) -> list[str]:
    """The stored runs' keys (none while the driver is still creating the database)."""
    con = sqlite3.connect(folder / "results.sqlite", timeout=30)
    try:
        return [k for (k,) in con.execute("SELECT key FROM runs")]
    except sqlite3.OperationalError:  # no table yet
        return []
    finally:
        con.close()


def _assert_every_run_once(folder: Path, toml: Path) -> None:
    """Each run of the grid has one row and one complete folder holding its own result."""
    study = load_study(toml)
    assert sorted(_keys(folder)) == sorted(r.key for r in study.runs())
    assert sorted(p.name for p in (folder / "runs").iterdir()) == sorted(run_id(r) for r in study.runs())
    for r in load_results(folder):
        assert load_file(str(folder / r["checkpoint"]))["top1"].item() == r["result"]["top1"]


def _excite(args, cwd, env=ENV, **kw):
    return subprocess.Popen([sys.executable, "-m", "excite", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_a_digits_study_on_ray_matches_the_local_runner(cluster, tmp_path, monkeypatch):
    """The project's engine on digits (1 epoch of 2 batches): the same seeds give the same numbers and
    the same weights, bit for bit, whichever runner trained them (both train with one thread)."""
    toml = _toml(tmp_path, seeds="[0]", recipe='{ name = "digits-short", epochs = 1, subset = 64, batch_size = 32 }')
    monkeypatch.setenv("EXCITE_THREADS", "1")
    assert run_study(toml, tmp_path / "local", log=None)["done"] == 2
    counts = run_study_ray(toml, tmp_path / "ray", address=cluster, log=None)
    assert counts == dict(total=2, skipped=0, done=2)
    local = {r["key"]: r for r in load_results(tmp_path / "local")}
    remote = {r["key"]: r for r in load_results(tmp_path / "ray")}
    assert local.keys() == remote.keys()
    for key, a in local.items():
        b = remote[key]
        for name in ("top1", "top5", "params", "curve", "num_classes"):
            assert a["result"][name] == b["result"][name], name
        assert a["checkpoint"] == b["checkpoint"]
        wa, wb = load_file(str(tmp_path / "local" / a["checkpoint"])), load_file(str(tmp_path / "ray" / b["checkpoint"]))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # The workers' machine is recorded as where the runs trained (the driver trained nothing).
    from excite.study import db

    con = db.connect(tmp_path / "ray")
    assert db.get_meta(con, "machines")[0]["torch"] == torch.__version__
    con.close()


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _running_runs() -> dict[int, str]:
    """pid -> run id of the Ray workers training a run now (Ray titles a busy worker ``ray::TASK``)."""
    found = {}
    for d in Path("/proc").iterdir():
        try:
            title = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, ValueError):
            continue
        if title.startswith("ray::excite-run "):
            found[int(d.name)] = title.split()[1]
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker through /proc")
def test_killing_a_worker_mid_run_loses_and_duplicates_nothing(cluster, tmp_path):
    toml = _toml(tmp_path)  # 4 runs of 2 s on 2 workers
    folder = tmp_path / "k"
    driver = _excite(["study", "run", str(toml), "--out", str(folder), "--trainer", SYNTHETIC, "--ray", cluster],
                     cwd=tmp_path)
    try:
        pid, killed = next(iter(_wait_for(_running_runs, 180, "a run on a Ray worker").items()))
        os.kill(pid, signal.SIGKILL)
        out, err = driver.communicate(timeout=300)
    finally:
        driver.kill()
    assert driver.returncode == 0, err[-3000:]
    assert "4 run(s) finished" in out
    _assert_every_run_once(folder, toml)
    assert killed in {p.name for p in (folder / "runs").iterdir()}  # the killed run was retried and kept


def test_interrupted_then_killed_ray_driver_then_local_resume_records_every_run_once(cluster, tmp_path):
    """Ctrl-C on a Ray driver, then ``kill -9`` on the next, then a local resume: every run once."""
    toml = _toml(tmp_path, seeds="[0, 1, 2]", recipe="{ toy_sleep = 4 }")  # 6 runs on 2 workers: 12 s to interrupt
    folder = tmp_path / "d"
    args = ["study", "run", str(toml), "--out", str(folder), "--trainer", SYNTHETIC]

    def stop_after_more_than(n: int, sig: int) -> subprocess.Popen:
        driver = _excite([*args, "--ray", cluster], cwd=tmp_path)
        try:
            _wait_for(lambda: (folder / "results.sqlite").exists() and len(_keys(folder)) > n, 240,
                      f"more than {n} runs stored by the Ray driver")
        finally:
            driver.send_signal(sig)
            driver.communicate(timeout=120)
        return driver

    interrupted = stop_after_more_than(0, signal.SIGINT)
    assert interrupted.returncode == 130  # Ctrl-C: the runs in flight cancelled, the folder unlocked
    first = len(_keys(folder))
    stop_after_more_than(first, signal.SIGKILL)
    assert first < len(_keys(folder)) < 6, "the kill came too late to test anything"
    local = _excite(args, cwd=tmp_path)  # resumed without Ray
    out, err = local.communicate(timeout=300)
    assert local.returncode == 0, err[-3000:]
    assert "already finished" in err and "6 runs" in err
    _assert_every_run_once(folder, toml)
    assert not list((folder / "runs").glob("*.partial"))


def _one_line_error(p: subprocess.Popen, match: str) -> None:
    out, err = p.communicate(timeout=240)
    lines = [line for line in err.splitlines() if line.startswith("excite: ")]
    assert p.returncode == 2, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("excite: error: ") and match in lines[0], err[-3000:]


def test_unreachable_address_is_one_line_and_writes_nothing(tmp_path, capsys):
    from excite.cli import main

    toml = _toml(tmp_path)
    closed = _free_port()  # nothing listens there
    p = _excite(["study", "run", str(toml), "--out", "s", "--trainer", SYNTHETIC, "--ray", f"127.0.0.1:{closed}"],
                cwd=tmp_path)
    _one_line_error(p, f"no Ray cluster reachable at 127.0.0.1:{closed}")
    assert not (tmp_path / "s").exists()
    for args, match in ((["--ray", "no-port-here"], "is not HOST:PORT"),
                        (["--ray", "127.0.0.1:1", "--jobs", "2"], "--jobs applies to local studies"),
                        (["--gpus-per-run", "0.5"], "apply to --ray studies"),
                        (["--ray", "--gpus-per-run", "0.5"], "add --device cuda")):
        assert main(["study", "run", str(toml), "--out", str(tmp_path / "s"), "--trainer", SYNTHETIC, *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("excite: error: ") and match in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "s").exists()


def test_a_gpu_the_cluster_lacks_is_one_line_and_writes_nothing(cluster, tmp_path):
    toml = _toml(tmp_path)
    p = _excite(["study", "run", str(toml), "--out", "s", "--trainer", SYNTHETIC, "--ray", cluster, "--device", "cuda",
                 "--gpus-per-run", "0.25"], cwd=tmp_path)
    _one_line_error(p, "each run asks for 1 CPU and 0.25 GPU but no node of the Ray cluster has that")
    assert not (tmp_path / "s").exists()


def test_a_model_file_the_workers_cannot_import_is_one_line_and_writes_nothing(cluster, tmp_path, monkeypatch):
    """The model file imports a module that only the driver's path holds (as when a package is
    installed on the submitting machine but not on the cluster)."""
    from excite.core.errors import ExciteError

    lib = tmp_path / "driver-only"
    lib.mkdir()
    (lib / "driver_only_layers.py").write_text("WIDTH = 4\n")
    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\nimport driver_only_layers\n\n"
        "def net(num_classes=10):\n"
        "    w = driver_only_layers.WIDTH\n"
        "    return nn.Sequential(nn.Conv2d(3, w, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, num_classes))\n")
    toml = tmp_path / "study.toml"
    toml.write_text(f'name = "user-model"\nmodels = ["{tmp_path / "net.py"}:net"]\nseeds = [0]\n'
                    '[[variant]]\nlabel = "plain"\n')
    monkeypatch.syspath_prepend(str(lib))  # the driver imports it; the cluster's workers cannot
    from excite.factory import resolve_model

    assert resolve_model(f"{tmp_path / 'net.py'}:net") is not None
    with pytest.raises(ExciteError, match="a Ray worker cannot load the study's code: model .*No module named "
                                          "'driver_only_layers'"):
        run_study_ray(toml, tmp_path / "s", address=cluster, trainer=SYNTHETIC, log=None,
                      trust_code=[f"{tmp_path / 'net.py'}:net"])
    assert not (tmp_path / "s").exists()
