"""The run folder: its lock, the rule that a folder belongs to one run, ``config.json`` and the logs."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

from excite.core.errors import ExciteError
from excite.files.folderlock import FolderLock, move_aside, remove_created, settle_aside
from excite.files.modelfile import atomic_write_bytes

# The files a training run writes in its folder (--overwrite replaces exactly these).
RUN_FILES = ("last.safetensors", "best.safetensors", "log.jsonl", "log.csv", "config.json", "metrics.json")


def open_out(out: Path, resume: bool, overwrite: bool):
    """Create (if needed) and lock the run folder ``out``; return ``(lock, created)``.

    A folder belongs to one run: a folder that holds a run (``last.safetensors``) is refused unless
    ``resume`` (continue it) or ``overwrite`` (replace its files). Leftovers of a run that wrote no
    checkpoint are replaced without asking: there is nothing in them to continue from.
    """
    if out.exists() and not out.is_dir():
        raise ExciteError(f"output folder {out} is not writable: it exists and is a file")
    created = [p for p in (out, *out.parents) if not p.exists()]  # removed again if the run fails early
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(out, "training run")
    except ExciteError:
        raise
    except OSError as e:
        if created:
            remove_created(created)
        raise ExciteError(f"output folder {out} is not writable: {e.strerror or e}") from None
    try:
        settle_aside(out)  # an --overwrite interrupted before its first checkpoint: the old run is back
        has_run = (out / "last.safetensors").is_file()
        if has_run and not resume and not overwrite:
            raise ExciteError(f"{out} already holds a training run (last.safetensors); continue it with --resume, "
                              f"replace it with --overwrite, or choose another --out")
        if not resume:  # kept aside until the new run has checkpointed, then removed (settle_aside)
            move_aside(out, (*RUN_FILES, "tensorboard"))
    except BaseException:
        lock.release()
        if created:
            remove_created(created)
        raise
    return lock, created


@contextlib.contextmanager
def run_folder(folder: str | None, *, resume: bool, overwrite: bool):
    """Hold the run folder (or nothing: ``folder`` None) for the body; yield its ``Path`` or None.

    The folder is locked for the run (``<out>/.lock``: a second writer is refused, naming the holder);
    a folder the run created is removed again if the body fails before its first checkpoint.
    """
    if resume and folder and not (Path(folder) / "last.safetensors").is_file():
        raise ExciteError(f"--resume: {folder} holds no last.safetensors to continue from; "
                          "run without --resume to start a new run there")
    if resume and not folder:
        raise ExciteError("--resume needs --out (the folder holding last.safetensors)")
    if folder is None:
        yield None
        return
    out = Path(folder)
    lock, created = open_out(out, resume, overwrite)
    try:
        yield out
    except BaseException:
        if created and not (out / "last.safetensors").exists():
            lock.release()
            remove_created(created)
        raise
    finally:
        settle_aside(out)  # what --overwrite replaced: removed after a checkpoint, else restored
        lock.release()


def write_config(out: Path, config: dict, spec: dict) -> None:
    """``config.json``: the resolved training config (every recipe option) and the model's description."""
    (out / "config.json").write_text(json.dumps({**config, "model_spec": spec}, indent=2) + "\n")


def write_metrics(out: Path, metrics: dict) -> None:
    """``metrics.json``: the final evaluation, the best top-1, throughput and the history."""
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def rewrite_logs(out: Path, history: list[dict]) -> None:
    """Rewrite ``log.jsonl`` and ``log.csv`` from a checkpoint's history (on resume): the log then
    holds exactly the checkpoint's epochs (a failed save may have left more)."""
    atomic_write_bytes(out / "log.jsonl", "".join(json.dumps(row) + "\n" for row in history).encode())
    if history:
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
        atomic_write_bytes(out / "log.csv", buf.getvalue().encode())
    else:
        (out / "log.csv").unlink(missing_ok=True)


def log(out: Path, row: dict) -> None:
    """Append one epoch's metrics to ``log.jsonl`` and ``log.csv``."""
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    path = out / "log.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
