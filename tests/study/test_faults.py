"""Faults: a full disk, a read-only folder, two writers on one folder, kills (mid-epoch, of a study
with worker processes). Each ends in one line and leaves the folder consistent: the log holds exactly
the checkpoint's epochs, a stale lock is recovered, no process outlives a killed study."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import excite
from excite.cli import main
from excite.core.errors import ExciteError
from excite.files.folderlock import FolderLock
from excite.files.modelfile import load_state, read_model_file

SRC = str(Path(excite.__file__).parents[1])
TINY = str((Path(__file__).parents[1] / "tiny_net.py")) + ":Tiny"  # a user model file: fast to train
# 64 digits, batch 32: 2 steps per epoch, a fraction of a second per epoch on one thread.
FAST = ["--model", TINY, "--subset", "64", "--batch-size", "32", "--threads", "1", "--no-progress",
        "--warmup-epochs", "0"]


def cli(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    cap = capsys.readouterr()
    return rc, [ln for ln in cap.err.splitlines() if ln.strip()], cap.out


def logged_epochs(out: Path) -> list[int]:
    return [json.loads(ln)["epoch"] for ln in (out / "log.jsonl").read_text().splitlines()]


def csv_epochs(out: Path) -> list[int]:
    lines = (out / "log.csv").read_text().splitlines()
    return [int(ln.split(",")[0]) for ln in lines[1:]]


# -- a full disk ------------------------------------------------------------------------------------

class _SmallDisk:
    """``open`` for one folder whose files may hold ``limit`` bytes in all; writes beyond raise ENOSPC,
    as a full disk does (the file is left with what fitted)."""

    def __init__(self, folder: Path, limit: int):
        self.folder, self.limit, self.real_open = str(folder), limit, open

    def used(self) -> int:
        return sum(p.stat().st_size for p in Path(self.folder).rglob("*") if p.is_file())

    def __call__(self, file, mode="r", *args, **kwargs):
        f = self.real_open(file, mode, *args, **kwargs)
        if not str(Path(file).resolve()).startswith(self.folder) or not any(c in mode for c in "wa+"):
            return f
        disk, write = self, f.write

        def limited(data):
            room = disk.limit - disk.used()
            if len(data) > room:
                if room > 0:
                    write(data[:room])
                    f.flush()
                raise OSError(errno.ENOSPC, "No space left on device", str(file))
            return write(data)

        f.write = limited
        return f


def _checkpoint_bytes(tmp_path) -> int:
    """Size of one training checkpoint of the tiny model (weights, momentum, RNG, history)."""
    excite.train(model=TINY, dataset="digits", subset=64, batch_size=32, epochs=1, out=str(tmp_path / "probe"),
                 progress=False, threads=1)
    return (tmp_path / "probe" / "last.safetensors").stat().st_size


def test_disk_full_is_one_line_and_log_matches_checkpoints(tmp_path, monkeypatch, capsys):
    import excite.files.modelfile as modelfile
    import excite.training.runfolder as runfolder

    size = _checkpoint_bytes(tmp_path)
    out = (tmp_path / "run").resolve()
    out.mkdir()
    # Room for epoch 1 (last + best + config + logs), not for epoch 2's last checkpoint beside them.
    disk = _SmallDisk(out, int(2.6 * size))
    monkeypatch.setattr(modelfile, "open", disk, raising=False)
    monkeypatch.setattr(runfolder, "open", disk, raising=False)
    rc, err, _ = cli(["train", "--out", str(out), "--epochs", "3", *FAST], capsys)
    assert rc == 2 and len(err) == 1 and "No space left on device" in err[0], err
    assert load_state(out / "last.safetensors")["step"] == 2  # epoch 1's checkpoint survives
    assert logged_epochs(out) == [1]  # the epoch that failed to save is not in the log
    assert not list(out.glob("*.tmp"))
    monkeypatch.undo()  # space freed: resume
    rc, err, _ = cli(["train", "--out", str(out), "--epochs", "3", "--resume", *FAST], capsys)
    assert rc == 0, err
    assert logged_epochs(out) == [1, 2, 3] and csv_epochs(out) == [1, 2, 3]
    assert [h["epoch"] for h in load_state(out / "last.safetensors")["history"]] == [1, 2, 3]


def test_disk_full_on_a_real_small_filesystem(tmp_path, capsys):
    size = _checkpoint_bytes(tmp_path)
    mnt = tmp_path / "small"
    mnt.mkdir()
    # room for two checkpoints and the small files (a page each), not for a third checkpoint
    kb = int(2.2 * size) // 1024 + 24
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kb}k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()})")
    try:
        out = mnt / "run"
        rc, err, _ = cli(["train", "--out", str(out), "--epochs", "3", *FAST], capsys)
        assert rc == 2 and len(err) == 1 and "No space left on device" in err[0], err
        st = load_state(out / "last.safetensors")
        history = [h["epoch"] for h in st["history"]]
        assert st["step"] in (2, 4) and logged_epochs(out) == history[:len(logged_epochs(out))]
        assert not list(out.glob("*.tmp"))
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


# -- a read-only folder -----------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["log", "replace"])
def test_folder_made_read_only_mid_run_is_one_line(where, tmp_path, monkeypatch, capsys):
    """Root ignores chmod, so the read-only file system is simulated where excite writes: the log's
    ``open`` or the checkpoint's ``os.replace`` raises EROFS from epoch 2 on."""
    import excite.files.modelfile as modelfile
    import excite.training.runfolder as runfolder

    out = tmp_path / "run"
    calls = {"n": 0}
    real_open, real_replace = open, os.replace

    def ro_open(file, mode="r", *a, **k):
        if str(file).endswith("log.jsonl") and "a" in mode:
            calls["n"] += 1
            if calls["n"] > 1:
                raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *a, **k)

    def ro_replace(src, dst):
        if str(dst).endswith("last.safetensors"):
            calls["n"] += 1
            if calls["n"] > 1:
                raise OSError(errno.EROFS, "Read-only file system", str(dst))
        return real_replace(src, dst)

    if where == "log":
        monkeypatch.setattr(runfolder, "open", ro_open, raising=False)
    else:
        monkeypatch.setattr(modelfile.os, "replace", ro_replace)
    rc, err, _ = cli(["train", "--out", str(out), "--epochs", "3", *FAST], capsys)
    monkeypatch.undo()
    assert rc == 2 and len(err) == 1 and "Read-only file system" in err[0], err
    history = [h["epoch"] for h in load_state(out / "last.safetensors")["history"]]
    # the log never runs ahead of the checkpoint (it may lag by the epoch whose log write failed)
    assert logged_epochs(out) == history[:len(logged_epochs(out))]
    assert not (out / ".lock").exists()
    rc, err, _ = cli(["train", "--out", str(out), "--epochs", "3", "--resume", *FAST], capsys)
    assert rc == 0, err
    assert logged_epochs(out) == [1, 2, 3]


# -- one writer per folder --------------------------------------------------------------------------

def test_second_trainer_on_a_folder_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap_lock(out)], stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": SRC})
    try:
        assert holder.stdout.readline().strip() == b"locked"
        rc, err, _ = cli(["train", "--out", str(out), "--epochs", "1", *FAST], capsys)
        assert rc == 2 and len(err) == 1, err
        assert f"process {holder.pid}" in err[0] and "in use" in err[0]
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing of ours written
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed (-9): its lock is stale and the next run recovers it
    assert (out / ".lock").exists()
    rc, err, _ = cli(["train", "--out", str(out), "--epochs", "1", *FAST], capsys)
    assert rc == 0, err
    assert not (out / ".lock").exists()


def textwrap_lock(out: Path) -> str:
    return ("import sys, time\nfrom excite.files.folderlock import FolderLock\n"
            f"lock = FolderLock({str(out)!r}, 'training run')\nprint('locked', flush=True)\ntime.sleep(600)\n")


def test_lock_is_exclusive_and_a_dead_holder_is_recovered(tmp_path):
    lock = FolderLock(tmp_path, "training run")
    with pytest.raises(ExciteError, match=f"process {os.getpid()} on "):
        FolderLock(tmp_path, "training run")
    lock.release()
    assert not (tmp_path / ".lock").exists()
    # a lock file left by a process that no longer exists (no flock held on it)
    (tmp_path / ".lock").write_text("999999999 somehost\n")
    with FolderLock(tmp_path, "training run"):
        assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())


def test_a_folder_belongs_to_one_run(tmp_path, capsys):
    out = tmp_path / "runs" / "eca"
    assert cli(["train", "--out", str(out), "--epochs", "1", *FAST], capsys)[0] == 0
    first = read_model_file(out / "last.safetensors").tensors
    rc, err, _ = cli(["train", "--out", str(out), "--epochs", "1", "--seed", "1", *FAST], capsys)
    assert rc == 2 and "--resume" in err[0] and "--overwrite" in err[0], err
    assert all(torch.equal(first[k], v) for k, v in read_model_file(out / "last.safetensors").tensors.items())
    rc, err, _ = cli(["train", "--out", str(out), "--epochs", "1", "--seed", "1", "--overwrite", *FAST], capsys)
    assert rc == 0, err
    assert logged_epochs(out) == [1]  # the old run's log went with it
    assert not all(torch.equal(first[k], v) for k, v in read_model_file(out / "last.safetensors").tensors.items())


def test_failed_run_leaves_no_folder(tmp_path, capsys):
    """A run that fails in its first epoch (an unreadable image) removes the folders it created."""
    from PIL import Image

    data = tmp_path / "imgs"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (data / split / cls).mkdir(parents=True)
            Image.new("RGB", (16, 16), (200 if cls == "a" else 0, 0, 0)).save(data / split / cls / "0.png")
    (data / "train" / "b" / "1.png").write_bytes(b"not a png")
    out = tmp_path / "new" / "run"
    rc, err, _ = cli(["train", "--dataset", "imagefolder", "--data", str(data), "--image-size", "16", "--workers", "0",
                      "--batch-size", "3", "--epochs", "1", "--out", str(out), "--threads", "1", "--no-progress"], capsys)
    assert rc == 2 and len(err) == 1 and "1.png" in err[0], err
    assert not (tmp_path / "new").exists()


# -- kill -9 mid-epoch, resume bit-identically -------------------------------------------------------

def test_kill_mid_epoch_with_checkpoint_every_resumes_bit_identically(tmp_path):
    """16 steps (2 epochs of 8); checkpoints every 3 steps. kill -9 once the first mid-epoch checkpoint
    exists (before the first epoch end if the machine is not too fast), resume, compare every tensor
    with an uninterrupted run."""
    args = ["train", "--model", TINY, "--subset", "256", "--batch-size", "32", "--epochs", "2", "--threads", "1",
            "--no-progress", "--checkpoint-every", "3"]
    env = {**os.environ, "PYTHONPATH": SRC}
    full = tmp_path / "full"
    assert main([*args, "--out", str(full)]) == 0  # uninterrupted, in this process
    out = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-m", "excite", *args, "--out", str(out)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "last.safetensors").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    step = load_state(out / "last.safetensors")["step"]
    assert 3 <= step < 16
    assert (out / ".lock").exists()  # left by the killed process; the resume recovers it
    assert main([*args, "--out", str(out), "--resume"]) == 0
    a, b = read_model_file(full / "last.safetensors"), read_model_file(out / "last.safetensors")
    assert a.state["step"] == b.state["step"] == 16
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert logged_epochs(out) == logged_epochs(full) == [1, 2]


# -- studies ----------------------------------------------------------------------------------------

STUDY = """
name = "faults"
models = ["resnet20"]
seeds = [0, 1]
recipe = {{ toy_sleep = {sleep} }}
[[variant]]
label = "none"
[[variant]]
label = "eca"
attention = "eca"
"""


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid`` (Linux /proc)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(d.name))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups read from /proc")
def test_killing_a_study_with_workers_leaves_no_process_and_the_rerun_completes(tmp_path, capsys):
    toml = tmp_path / "s.toml"
    toml.write_text(STUDY.format(sleep=3))
    out = tmp_path / "study"
    argv = [sys.executable, "-m", "excite", "study", "run", str(toml), "--out", str(out), "--jobs", "2",
            "--trainer", "excite.study.runner:synthetic_trainer"]
    env = {**os.environ, "PYTHONPATH": SRC}
    p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    # wait for both workers to be training (a .partial folder each)
    while len(list((out / "runs").glob("*.partial")) if (out / "runs").is_dir() else []) < 2:
        assert p.poll() is None and time.time() < deadline, p.stderr.read().decode() if p.poll() is not None else "timeout"
        time.sleep(0.1)
    assert len(_group(p.pid)) >= 3  # the study, its workers (and the resource tracker)
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stderr.close()
    deadline = time.time() + 30
    while _group(p.pid) and time.time() < deadline:
        time.sleep(0.2)
    left = _group(p.pid)
    for pid in left:  # do not leave them to the rest of the test session
        os.kill(pid, signal.SIGKILL)
    assert left == [], "processes outlived the killed study"
    # the rerun (in this process, one job: the workers' start-up is what costs here) completes the grid
    rc, err, stdout = cli(["study", "run", str(toml), "--out", str(out), "--trainer",
                           "excite.study.runner:synthetic_trainer"], capsys)
    assert rc == 0, err
    assert "run(s) finished" in stdout
    from excite.study.db import load_results

    rows = load_results(out)
    assert len(rows) == 4 and len({r["key"] for r in rows}) == 4


def test_a_different_study_in_a_study_folder_is_refused(tmp_path, capsys):
    toml = tmp_path / "s.toml"
    toml.write_text(STUDY.format(sleep=0))
    out = tmp_path / "study"
    base = ["study", "run", str(toml), "--out", str(out), "--trainer", "excite.study.runner:synthetic_trainer"]
    rc, err, stdout = cli(base, capsys)
    assert rc == 0, err
    assert any("[4/4]" in ln for ln in err) and "run(s) finished" in stdout  # progress on stderr
    assert cli(base, capsys)[0] == 0  # the same study again: nothing to do, allowed
    more = tmp_path / "more.toml"  # more seeds and another variant extend the study: allowed
    more.write_text(STUDY.format(sleep=0).replace("seeds = [0, 1]", "seeds = [0, 1, 2]")
                    + '[[variant]]\nlabel = "se"\nattention = "se"\n')
    more_argv = ["study", "run", str(more), "--out", str(out), "--trainer", "excite.study.runner:synthetic_trainer"]
    rc, err, _ = cli(more_argv, capsys)
    assert rc == 0, err
    from excite.study.db import load_results

    assert len(load_results(out)) == 9
    other = tmp_path / "other.toml"
    # the same label for other settings: its stored results would be mixed with the new ones
    other.write_text(STUDY.format(sleep=0).replace('attention = "eca"', 'attention = "eca"\nattention_kwargs = {k_size = 3}'))
    argv = ["study", "run", str(other), "--out", str(out), "--trainer", "excite.study.runner:synthetic_trainer"]
    rc, err, _ = cli(argv, capsys)
    assert rc == 2 and len(err) == 1 and "another study" in err[0] and "--overwrite" in err[0], err
    rc, err, _ = cli(argv + ["--overwrite"], capsys)
    assert rc == 0, err
    rows = load_results(out)
    assert len(rows) == 4 and all(r["run"]["variant"]["attention_kwargs"] == {"k_size": 3} for r in rows
                                  if r["label"] == "eca")


def test_engine_study_shows_each_runs_epochs(tmp_path, capsys):
    toml = tmp_path / "s.toml"
    toml.write_text('name = "p"\nseeds = [0]\nrecipe = {epochs = 2, subset = 64, batch_size = 32, threads = 1}\n'
                    '[[variant]]\nlabel = "none"\n')
    rc, err, _ = cli(["study", "run", str(toml), "--out", str(tmp_path / "st")], capsys)
    assert rc == 0, err
    assert any("epoch 1/2" in ln for ln in err) and any("epoch 2/2" in ln for ln in err)
    assert any("[1/1]" in ln for ln in err)
