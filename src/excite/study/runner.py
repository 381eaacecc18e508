"""Run a study: every grid point not yet in the results database, on ``jobs`` worker processes.

The parent process owns the database and writes each finished run in one transaction; workers
only train. Killing the parent (or a worker) at any moment therefore loses at most the runs in
flight, and the next ``run_study`` on the same folder restarts exactly those. Runs are identified
by their settings (``Run.key``), so a rerun never duplicates a stored result.

Each run keeps its final weights in ``STUDY_DIR/runs/<run-id>/`` (``model.safetensors`` and its
JSON, loadable with ``create_model(..., checkpoint=...)`` and ``excite inspect``). A run trains into
``runs/<run-id>.partial/``; only when it has finished is that folder renamed to ``runs/<run-id>/``
and, after that, the database row (with the folder's path) committed. A killed run therefore leaves
at most a ``.partial`` folder, or a complete folder without a row; both are replaced when the run is
restarted, and a folder with a row is never touched again.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import inspect
import json
import multiprocessing as mp
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from excite.core.errors import ExciteError
from excite.core.spec import parse_reference
from excite.core.trust import allow_code, granted, set_process_grant
from excite.data import load_dataset
from excite.deploy.threads import auto_threads, free_cores
from excite.factory import create_model, is_model_file
from excite.files.folderlock import FolderLock, remove_created
from excite.files.modelfile import save_model
from excite.study import db
from excite.study.spec import Run, Study, load_study
from excite.training import make_config, train

# Per-worker state set by the pool initializer: which device this worker trains on.
_WORKER = {"device": "cpu"}

RUNS_DIR = "runs"  # inside the study folder: one sub-folder of kept weights per finished run
CHECKPOINT_NAME = "model.safetensors"


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS), else the architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info() -> dict:
    """What the study ran on, stored beside the results (README numbers must name the machine)."""
    info = dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                cpu_model=cpu_model(), cpu_count=os.cpu_count(), python=platform.python_version(),
                torch=torch.__version__)
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def run_id(run: Run) -> str:
    """The run's folder name under ``runs/``: readable settings plus a hash of the full key (unique)."""
    label = re.sub(r"[^A-Za-z0-9]+", "-", run.variant.label).strip("-").lower() or "variant"
    return f"{run.model}_{label}_s{run.seed}_{hashlib.sha256(run.key.encode()).hexdigest()[:8]}"


def _accepts_out(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "out" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _call(fn: Callable, run: Run, device: str, out: Path) -> dict:
    """Call a trainer, giving it ``out`` (the run's ``.partial`` folder) when it takes one."""
    if _accepts_out(fn):
        out.mkdir(parents=True, exist_ok=True)
        return fn(run, device=device, out=out)
    return fn(run, device=device)


def _prepare(folder: Path, run: Run) -> Path:
    """The empty ``runs/<id>.partial`` folder this run trains into (a killed attempt's is removed)."""
    partial = folder / RUNS_DIR / f"{run_id(run)}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    return partial


def _commit(con, folder: Path, run: Run, result: dict, partial: Path) -> bool:
    """Move a finished run's folder into place, then store its row (one transaction)."""
    result = dict(result)
    name = result.pop("checkpoint", None)
    if db.is_finished(con, run.key):  # another process on the same folder finished it first
        shutil.rmtree(partial, ignore_errors=True)
        return False
    checkpoint = None
    if partial.is_dir() and any(partial.iterdir()):
        final = folder / RUNS_DIR / run_id(run)
        if final.exists():  # complete but unrecorded: killed between the rename and the commit
            shutil.rmtree(final)
        os.replace(partial, final)
        if name:
            checkpoint = f"{RUNS_DIR}/{final.name}/{name}"
    else:
        shutil.rmtree(partial, ignore_errors=True)
    return db.write_result(con, run, result, checkpoint=checkpoint)


def resolve_trainer(trainer) -> Callable:
    """A trainer is a callable ``trainer(run, device=...) -> dict`` or its ``"module:function"`` name."""
    if trainer is None:
        return engine_trainer
    if callable(trainer):
        return trainer
    mod, _, fn = str(trainer).partition(":")
    try:
        found = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError, ValueError):
        raise ExciteError(f"trainer {trainer!r} not found; expected 'package.module:function'") from None
    except Exception as e:  # the user's module raised while importing: their bug, named in one line
        raise ExciteError(f"trainer {trainer!r}: importing {mod} failed: {type(e).__name__}: {e}") from None
    if not callable(found):
        raise ExciteError(f"trainer {trainer!r} is a {type(found).__name__}, not a function")
    return found


def engine_trainer(run: Run, *, device: str = "cpu", out: str | Path | None = None) -> dict:
    """Train one grid point with the project's training engine (``excite.training.train``).

    ``run.recipe`` is ``{"name": RECIPE, **TrainConfig overrides}``; the model is built with the
    variant's attention settings and architecture options. Returns final test top-1/top-5, training
    img/s, the parameter count and the per-epoch history (``curve``). With ``out``, the final weights
    are written there (``model.safetensors``, a model file: :func:`excite.save_model`). The model's whole
    description (attention settings, architecture options) is in the training config, so the run's
    ``config.json`` and model file describe the model that was trained.
    """

    recipe = {k: v for k, v in run.recipe.items() if not k.startswith("toy_")}
    name = recipe.pop("name", None)
    train_data, _ = load_dataset(run.dataset, recipe.get("data"))
    ncls, shape = train_data.num_classes, list(train_data.input_shape)
    v = run.variant
    cfg = make_config(dict(recipe, model=run.variant.spec(run.model), dataset=run.dataset, seed=run.seed, device=device,
                           threads=min(torch.get_num_threads(), os.cpu_count() or 1), progress=False), recipe=name)
    res = train(cfg, on_epoch=_epoch_progress(run))
    model = res.pop("model")
    curve = [dict(epoch=h["epoch"], train_loss=h["loss"], top1=h["top1"]) for h in res.get("history", [])]
    result = dict(top1=res["top1"], top5=res.get("top5"), best_top1=res.get("best_top1"), img_per_s=res.get("img_per_s"),
                  params=sum(p.numel() for p in model.parameters()), curve=curve, input_size=shape, num_classes=ncls)
    if out is not None:
        result["checkpoint"] = _save_weights(model, out, run, result)
    return result


def _epoch_progress(run: Run):
    """Print one line per epoch of a run to stderr (from a worker too: it shares the parent's stderr)."""
    def show(row: dict) -> None:
        print(f"  {run.model} {run.variant.label} seed {run.seed}: epoch {row['epoch']}/{row['epochs']} "
              f"loss {row['loss']:.3f} top-1 {row['top1']:.2f}%", file=sys.stderr, flush=True)

    return show


def _save_weights(model, out: str | Path, run: Run, result: dict) -> str:
    """Write the final weights to ``out/model.safetensors``, a model file whose header names the run."""
    meta = dict(study_run=run.to_dict(), study_key=run.key, dataset=run.dataset, seed=run.seed)
    save_model(model.cpu(), Path(out) / CHECKPOINT_NAME, provenance=meta, metrics={"top1": result.get("top1")})
    return CHECKPOINT_NAME


def toy_trainer(run: Run, *, device: str = "cpu", out: str | Path | None = None) -> dict:
    """Train the run's real model for a few steps on generated data (seconds on a CPU).

    The data: 4 classes of 3x8x8 noise images, class c brightens quadrant c; a model that learns
    anything separates them. Recipe keys ``toy_epochs`` and ``toy_sleep`` (seconds per epoch, for the
    kill-and-rerun test) tune it. Used by the tests and to try a study definition quickly.
    """


    torch.manual_seed(run.seed)
    g = torch.Generator().manual_seed(1234 + run.seed)
    n, size, ncls = 32, 8, 4
    y = torch.arange(n) % ncls
    x = torch.randn(n, 3, size, size, generator=g) * 0.5
    for c in range(ncls):
        r, q = divmod(c, 2)
        x[y == c, :, r * 4:(r + 1) * 4, q * 4:(q + 1) * 4] += 1.0
    model = create_model(run.variant.spec(run.model), num_classes=ncls).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    curve = []
    epochs = int(run.recipe.get("toy_epochs", 1))
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for i in range(0, n, 16):
            loss = F.cross_entropy(model(x[i:i + 16].to(device)), y[i:i + 16].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
        time.sleep(float(run.recipe.get("toy_sleep", 0)))
        curve.append(dict(epoch=epoch + 1, train_loss=float(loss.detach())))
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        t1 = time.perf_counter()
        pred = model(x.to(device)).argmax(1).cpu()
        eval_s = time.perf_counter() - t1
    top1 = 100.0 * float((pred == y).float().mean())
    curve[-1]["top1"] = top1
    result = dict(top1=top1, curve=curve, params=sum(p.numel() for p in model.parameters()), train_seconds=train_s,
                  img_per_s=n / max(eval_s, 1e-9), input_size=[3, size, size], num_classes=ncls)
    if out is not None:
        result["checkpoint"] = _save_weights(model, out, run, result)
    return result


def _die_with_parent() -> None:
    """Make this worker process end when the study process ends, however it ends (``kill -9`` too).

    Linux: ``PR_SET_PDEATHSIG`` has the kernel send SIGKILL when the parent dies. Elsewhere (and as a
    second line), a daemon thread checks every second whether the parent is gone (``getppid`` changes
    when a process is re-parented). Without this, killing ``excite study run --jobs N`` left the N pool
    workers training on, then idling forever.
    """

    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="excite-parent-watch", daemon=True).start()


def _init_worker(threads: int, devices, trusted=()) -> None:
    _die_with_parent()
    set_process_grant(trusted)  # the parent's --trust-code, for model files the runs load
    torch.set_num_threads(threads)
    if devices is not None:
        _WORKER["device"] = devices.get()


def _work(trainer, run: Run, out: str) -> dict:
    return _call(resolve_trainer(trainer), run, _WORKER["device"], Path(out))


def _lock_folder(folder: Path):
    """Hold an exclusive lock on ``folder`` for one ``run_study`` call: two studies running in one folder
    would clear each other's unfinished runs. The lock dies with the process, so a killed study never
    leaves the folder locked (:class:`excite.files.folderlock.FolderLock`)."""
    return FolderLock(folder, "running study")


# What makes two studies the same study: the runs' keys hold model, variant, dataset and seed, but not
# the recipe, so results of another recipe (or another variant under the same label) must not mix.
# Adding models, seeds or variants extends a study; it does not make another one.
_IDENTITY = ("name", "dataset", "recipe")


def _check_same_study(con, folder: Path, study: Study, overwrite: bool) -> None:
    """Refuse a different study in a folder that holds one (``overwrite`` clears its results instead)."""
    old = db.get_meta(con, "study")
    if old is None:
        return
    new = study.to_dict()
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731
    differs = [k for k in _IDENTITY if not same(old.get(k), new.get(k))]
    old_variants = {v.get("label"): v for v in old.get("variants") or []}
    differs += [f"variant {v['label']!r}" for v in new["variants"]
                if v["label"] in old_variants and not same(old_variants[v["label"]], v)]
    if not differs:
        return
    if not overwrite:
        raise ExciteError(f"{folder} holds the results of another study ({old.get('name')!r}; differs in "
                          f"{', '.join(differs)}); use another --out, or --overwrite to replace its results")
    con.execute("DELETE FROM runs")
    shutil.rmtree(folder / RUNS_DIR, ignore_errors=True)


def _check_buildable(study: Study) -> None:
    """Every model x variant of the grid builds (on the meta device: no memory, no weights), so a bad
    attention setting is one line before anything runs rather than a failure hours in."""

    for m in study.models:
        if is_model_file(m) or parse_reference(m)[0] != "registered":
            continue
        for v in study.variants:
            try:
                with torch.device("meta"):
                    create_model(v.spec(m))
            except ExciteError as e:
                raise ExciteError(f"study {study.name}: {m} with variant {v.label!r}: {e}") from None
            except TypeError as e:
                raise ExciteError(f"study {study.name}: {m} with variant {v.label!r}: {e}") from None


def check_study(study: Study | str, trainer=None, trust_code=None) -> tuple[Study, Callable]:
    """Load ``study`` and resolve ``trainer``; a bad trainer or an unbuildable grid point is one
    line here, before anything is written (shared by the local and the Ray runners)."""
    if not isinstance(study, Study):
        study = load_study(study, trust_code=trust_code)
    fn = resolve_trainer(trainer)
    if fn in (engine_trainer, toy_trainer):
        _check_buildable(study)
    return study, fn


class StudySession:
    """An open study folder: the locked database, the grid, the runs still to do, and the one place
    a finished run is recorded (:meth:`record`). Made by :func:`open_study`."""

    def __init__(self, study: Study, folder: Path, con, log: Callable[[str], None]):
        self.study, self.folder, self.con, self.log = study, folder, con, log
        finished = db.finished_keys(con)
        self.runs = study.runs()
        # The runs without a row: a killed session's runs in flight are among them, and nothing else.
        self.todo = [r for r in self.runs if r.key not in finished]
        self.done = 0

    def prepare(self, run: Run) -> Path:
        """The empty ``runs/<id>.partial`` folder the run's files go into."""
        return _prepare(self.folder, run)

    def record(self, run: Run, result: dict, machine: dict | None = None) -> bool:
        """Store a finished run whose files are in its ``.partial`` folder (folder renamed, then the row
        committed); ``machine``: where it trained, when not here. False if it was already stored."""
        if machine is not None:
            db.add_machine(self.con, machine)
        stored = _commit(self.con, self.folder, run, result, self.folder / RUNS_DIR / f"{run_id(run)}.partial")
        self.done += 1
        self.log(f"[{self.done}/{len(self.todo)}] {run.model} {run.variant.label} seed {run.seed}: "
                 f"top1 {result.get('top1', float('nan')):.2f}")
        return stored

    def counts(self) -> dict:
        """``{"total", "skipped", "done"}``: the grid, the runs stored before, the runs stored now."""
        return dict(total=len(self.runs), skipped=len(self.runs) - len(self.todo), done=self.done)


def _create_folder(folder: Path, overwrite: bool) -> tuple[list[Path], object]:
    """Create the study folder (refusing a non-study folder) and lock it; return what was created
    (removed again if opening fails) and the lock."""
    if folder.exists() and not folder.is_dir():
        raise ExciteError(f"cannot create study folder {folder}: it exists and is a file")
    if (folder.is_dir() and any(p.name != ".lock" for p in folder.iterdir()) and not (folder / db.DB_NAME).exists()
            and not overwrite):
        raise ExciteError(f"{folder} is not empty and holds no study; use another --out (or --overwrite to use it anyway)")
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return created, _lock_folder(folder)
    except OSError as e:
        remove_created(created)
        raise ExciteError(f"cannot create study folder {folder}: {e.strerror or e}") from None
    except BaseException:
        remove_created(created)
        raise


@contextmanager
def open_study(study: Study, folder: str | Path, *, overwrite: bool = False, log: Callable[[str], None] | None = print,
               here: bool = True):
    """Open (creating) ``folder`` for ``study`` and yield its :class:`StudySession`; the folder stays
    locked until the block ends. ``here``: record this machine as where the runs train (a cluster's
    driver does not: :meth:`StudySession.record` is given each run's machine instead)."""
    log = log or (lambda _msg: None)
    folder = Path(folder)
    created, lock = _create_folder(folder, overwrite)
    new_study = not (folder / db.DB_NAME).exists() and not (folder / RUNS_DIR).exists()
    try:
        con = db.connect(folder)
    except BaseException:
        lock.release()
        remove_created(created)
        raise
    ok = False
    try:
        _check_same_study(con, folder, study, overwrite)
        db.set_meta(con, "study", study.to_dict())
        if here:
            db.add_machine(con, machine_info())
        session = StudySession(study, folder, con, log)
        log(f"study {study.name}: {len(session.runs)} runs, {len(session.runs) - len(session.todo)} already "
            f"finished, {len(session.todo)} to run")
        yield session
        ok = True
    finally:
        keep = ok or not new_study or bool(db.finished_keys(con))
        con.close()
        lock.release()
        if not keep:  # a new study that stored no run: leave nothing this call created
            discard_new_study(folder, created)


def discard_new_study(folder: Path, created: list[Path]) -> None:
    """Remove what a study that stored no run created: its database, its ``runs/`` folder and the
    folders made for it (a failed command leaves nothing behind)."""
    for name in (db.DB_NAME, db.DB_NAME + "-wal", db.DB_NAME + "-shm", db.DB_NAME + "-journal"):
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / RUNS_DIR, ignore_errors=True)
    if created:
        remove_created(created)


def _run_serial(session: StudySession, fn: Callable, device: str) -> None:
    """Train the pending runs one after another in this process."""
    # Threads from the cores actually free: beside another busy process, torch's one thread per
    # core ran many times slower than one thread (benchmarks/under_load.py).
    torch.set_num_threads(auto_threads())
    for i, run in enumerate(session.todo):
        session.log(f"[{i}/{len(session.todo)} done] starting {run.model} {run.variant.label} seed {run.seed}")
        result = _call(fn, run, device, session.prepare(run))
        session.record(run, result)


def _run_pool(session: StudySession, trainer, jobs: int, ngpu: int) -> None:
    """Train the pending runs on ``jobs`` local worker processes; this process records them."""
    # Split the cores that are free now (not all of them) between the workers.
    threads = max(1, free_cores() // jobs)
    ctx = mp.get_context("spawn")  # fork after torch has started threads can deadlock
    devices = None
    if ngpu:
        devices = ctx.Manager().Queue()
        for i in range(jobs):
            devices.put(f"cuda:{i % ngpu}")
    if not isinstance(trainer, (str, type(None))):
        trainer = f"{trainer.__module__}:{trainer.__qualname__}"
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                             initargs=(threads, devices, tuple(granted()))) as pool:
        pending = {pool.submit(_work, trainer, r, str(session.prepare(r))): r for r in session.todo}
        while pending:
            finished_now, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished_now:
                session.record(pending.pop(fut), fut.result())


def run_study(study: Study | str, folder: str | Path, *, jobs: int = 1, trainer=None,
              log: Callable[[str], None] | None = print, overwrite: bool = False, device: str | None = None,
              trust_code=None) -> dict:
    """Run every grid point of ``study`` missing from ``folder``'s database.

    Args:
        study: a :class:`Study`, a TOML path or a built-in name.
        folder: the study folder (created); holds ``results.sqlite`` and ``runs/<run-id>/`` with
            each finished run's weights (when the trainer takes ``out``).
        jobs: worker processes; CPU threads are split between them, and each takes one GPU when
            there are GPUs.
        trainer: ``trainer(run, device=..., [out=...]) -> dict`` or its ``"module:function"`` name
            (picklable for ``jobs > 1``); ``None`` means the project's training engine. A trainer
            that takes ``out`` writes its files there and names its weights in ``result["checkpoint"]``.
        log: progress lines go here (``None`` for silence): runs done / total, and each run's
            epochs when the project's engine trains it.
        overwrite: a folder holding a different study's results is refused unless this is set, which
            clears those results.
        device: ``cpu``, ``cuda`` (every GPU here), or ``None``: the GPUs when there are any.
        trust_code: the code references (``file.py:Class``) a study file, or a model file a run
            loads, may run (see :mod:`excite.core.trust`); models the caller passes are their own.

    A study whose runs all fail before the first one is stored leaves nothing it created behind.
    Returns ``{"total", "skipped", "done"}`` counts. :func:`excite.study.ray_runner.run_study_ray`
    runs the same study on a Ray cluster, into the same folder.
    """
    if jobs < 1:
        raise ExciteError(f"jobs={jobs} is not valid; expected 1 or more")
    study, fn = check_study(study, trainer, trust_code)  # a bad --trainer is one line before anything is written
    if device not in (None, "cpu", "cuda"):
        raise ExciteError(f"device {device!r} is not valid for a study; expected cpu or cuda (runs share the GPUs)")
    if device == "cuda" and not torch.cuda.is_available():
        raise ExciteError("device cuda: no CUDA GPU is available here; use cpu")
    with open_study(study, folder, overwrite=overwrite, log=log) as session, allow_code(trust_code):
        ngpu = 0 if device == "cpu" else torch.cuda.device_count()
        if jobs == 1 or len(session.todo) <= 1:
            _run_serial(session, fn, "cuda:0" if ngpu else "cpu")
        else:
            _run_pool(session, trainer, jobs, ngpu)
    return session.counts()


def synthetic_trainer(run: Run, *, device: str = "cpu", out: str | Path | None = None) -> dict:
    """A stand-in trainer that builds no model: a deterministic score from the run's settings and
    seed, after ``recipe["toy_sleep"]`` seconds. Exercises the runner and the database (kill and
    rerun) without paying for training. With ``out``, writes a one-tensor ``model.safetensors`` holding
    the score (so tests can match a run's folder to its row)."""
    h = int(hashlib.sha256(run.key.encode()).hexdigest()[:8], 16)
    time.sleep(float(run.recipe.get("toy_sleep", 0)))
    top1 = 50.0 + (h % 1000) / 100.0
    result = dict(top1=top1, params=1000 + len(run.variant.label), img_per_s=100.0,
                  curve=[dict(epoch=1, train_loss=1.0, top1=top1 - 1), dict(epoch=2, train_loss=0.5, top1=top1)])
    if out is not None:

        save_file({"top1": torch.tensor([top1], dtype=torch.float64)}, str(Path(out) / CHECKPOINT_NAME))
        result["checkpoint"] = CHECKPOINT_NAME
    return result
