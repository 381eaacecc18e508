"""Run a study on a Ray cluster: each pending run is one Ray task that asks for the run's resources.

The process that calls :func:`run_study_ray` (the *driver*) is the only one that touches the study
folder. Workers train into a temporary folder on their own node and return the run's result *and its
files* (the final weights, a few MB for the networks of the papers' tables) through Ray's object
store; the driver writes them into ``runs/<run-id>.partial/``, renames that folder and commits the
row, exactly as the local runner does (:meth:`excite.study.runner.StudySession.record`). Returning
files rather than writing them on a shared path means:

- a cluster needs no shared filesystem (most cloud Ray clusters have none), and a worker on another
  machine can never write half a folder into the study;
- the crash guarantees of the local runner hold unchanged: one writer, files first, the row last, in
  one SQLite transaction. Killing the driver (Ctrl-C, ``kill -9``) leaves at most a ``.partial``
  folder or an unrecorded complete one, both replaced when the run is redone; Ray ends a dead driver's
  tasks, and ``excite study run NAME`` (with or without ``--ray``) redoes exactly the runs without a row.

A worker that dies mid-run (killed, out of memory, its node lost) is a *system* failure: Ray runs
the task again (``max_retries``), and the driver records a run only when its task returns, once (the
run key is the table's primary key, so even a duplicate result could not add a second row). An
exception raised by the trainer is not retried: the same code would fail the same way.

Every node needs excite and the study's code (a ``FILE.py:NAME`` model, a ``module:function``
trainer) importable: an installed package, the same path on a shared filesystem, or the driver's
folder on the same machine. A check task imports them on a worker before anything is written.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

from excite.core.errors import ExciteError
from excite.core.spec import parse_reference
from excite.core.trust import allow_code, granted
from excite.factory import is_model_file, resolve_model
from excite.study.runner import _call, check_study, machine_info, open_study, resolve_trainer, run_id
from excite.study.spec import Run, Study

# How long to wait for a cluster to answer a TCP connection: ray.init() itself retries an absent
# address for minutes before failing.
CONNECT_TIMEOUT_S = 5.0
# How long the import check may wait for a free worker (a busy cluster queues it like any task).
CHECK_TIMEOUT_S = 600.0


def _import_ray():
    try:
        import ray  # optional package: excite[ray]
    except ImportError:
        raise ExciteError("--ray needs the Ray package: pip install 'excite[ray]'") from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (also ``ray://HOST:PORT``) -> ``(host, port)``, or one line naming the format."""
    text = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ExciteError(f"Ray address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379, the head node's "
                          "`ray start --head` port) or 'auto'")
    return host.strip("[]"), int(port)


def _check_reachable(address: str) -> None:
    """One line for an address where no cluster listens, in seconds rather than Ray's minutes."""
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ExciteError(f"no Ray cluster reachable at {address} ({e.strerror or e}); start one with "
                          "`ray start --head` on its head node, or give --ray without an address for a "
                          "local one") from None


def connect(address: str | None = None, *, num_cpus: int | None = None, quiet: bool = False) -> bool:
    """Connect to the Ray cluster at ``address`` (``HOST:PORT``, ``auto``: the one started on this
    machine) or, with ``None``, start a local one with ``num_cpus`` CPUs (default: all). Returns
    whether this call started the connection (and so should end it: ``ray.shutdown()``)."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    if address not in (None, "auto", "local"):
        _check_reachable(address)
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=not quiet)
    if address in (None, "local"):
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(address=None if address == "local" else address, **kwargs)
    except ConnectionError as e:
        hint = ("; a cluster with token authentication also needs RAY_AUTH_MODE=token and its token in "
                "~/.ray/auth_token here" if os.environ.get("RAY_AUTH_MODE") is None else "")
        raise ExciteError(f"cannot connect to the Ray cluster at {address}: {str(e).splitlines()[0]}{hint}") from None
    return True


def check_resources(cpus: float, gpus: float) -> None:
    """One line when no live node of the cluster has ``cpus`` CPUs and ``gpus`` GPUs (a task asking
    for them would wait forever)."""
    nodes = [n.get("Resources", {}) for n in _import_ray().nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        return
    have = ", ".join(f"{r.get('CPU', 0):g} CPUs and {r.get('GPU', 0):g} GPUs" for r in nodes) or "no live node"
    want = f"{cpus:g} CPU{'s' if cpus > 1 else ''}" + (f" and {gpus:g} GPU{'s' if gpus > 1 else ''}" if gpus else "")
    hint = "; --device cuda needs a node with a GPU (`ray start --num-gpus N` on it)" if gpus else ""
    raise ExciteError(f"each run asks for {want} but no node of the Ray cluster has that (nodes: {have}){hint}")


def _enter_driver_folder(cwd: str) -> None:
    """Resolve relative paths and ``module:NAME`` references as the driver does, where its folder
    exists here (same machine or a shared filesystem): ``python -m excite`` has its folder on
    ``sys.path`` too."""
    if os.path.isdir(cwd):
        os.chdir(cwd)
        if cwd not in sys.path:
            sys.path.insert(0, cwd)


def _check_worker(trainer, study: Study, cwd: str, trusted=()) -> str | None:
    """On a worker: import the trainer and every model of the grid that is the user's code (built on
    the meta device: no memory, no weights). Returns the problem in one line, or None."""
    _enter_driver_folder(cwd)
    with allow_code(trusted):  # the driver's --trust-code, and nothing more
        return _check_code(trainer, study)


def _check_code(trainer, study: Study) -> str | None:
    try:
        resolve_trainer(trainer)
        for m in study.models:
            if is_model_file(m):
                if not os.path.isfile(m):
                    raise FileNotFoundError(2, "No such model file", m)
            elif parse_reference(m)[0] != "registered":
                for v in study.variants:
                    spec = v.spec(m)
                    resolve_model(m, attention=None if v.attention == "none" else v.attention,
                                  attention_kwargs=spec.attention_kwargs, options=spec.options, device="meta")
    except ExciteError as e:
        return str(e)
    except OSError as e:
        return f"{e.strerror or e}: {e.filename}" if e.filename else str(e)
    return None


def _train_run(trainer, run: Run, cwd: str, threads: int, device: str,
               trusted=()) -> tuple[dict, dict[str, bytes], dict]:
    """On a worker: train ``run`` into a temporary folder; return its result, its files (path relative
    to the run folder -> bytes) and this machine's description. Nothing is left on the worker."""
    _enter_driver_folder(cwd)
    torch.set_num_threads(threads)
    fn = resolve_trainer(trainer)
    with tempfile.TemporaryDirectory(prefix="excite-run-") as tmp, allow_code(trusted):
        result = _call(fn, run, device, Path(tmp))
        files = {p.relative_to(tmp).as_posix(): p.read_bytes() for p in sorted(Path(tmp).rglob("*")) if p.is_file()}
    return result, files, machine_info()


def _write_files(partial: Path, files: dict[str, bytes]) -> None:
    """Write a run's returned files into its ``.partial`` folder (names stay inside it)."""
    for name, data in files.items():
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ExciteError(f"a worker returned the file {name!r}, outside its run folder")
        (partial / rel).parent.mkdir(parents=True, exist_ok=True)
        (partial / rel).write_bytes(data)


def _task_error(ray, run: Run, e: Exception) -> Exception:
    """A failed task as the error to raise: the trainer's ExciteError or a worker that died on every
    retry as one line; anything else (a bug) keeps its traceback."""
    what = f"run {run.model} {run.variant.label} seed {run.seed}"
    cause = getattr(e, "cause", None)
    if isinstance(cause, ExciteError):
        return ExciteError(f"{what}: {cause}")
    if isinstance(e, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                      ray.exceptions.OutOfMemoryError)):
        return ExciteError(f"{what}: its Ray worker died on every try ({type(e).__name__}); nothing of it was recorded")
    return e


def _resources(device: str, cpus_per_run: float, gpus_per_run: float | None) -> tuple[float, float]:
    """The (CPUs, GPUs) each task asks for, checked."""
    if device not in ("cpu", "cuda"):
        raise ExciteError(f"device {device!r} is not valid for a Ray study; expected cpu or cuda (Ray picks the GPU)")
    if not (isinstance(cpus_per_run, (int, float)) and 0 < cpus_per_run <= 1024):
        raise ExciteError(f"cpus_per_run={cpus_per_run!r} is not valid; expected a number in (0, 1024]")
    if device == "cpu":
        if gpus_per_run:
            raise ExciteError("gpus per run were given with device cpu; add --device cuda")
        return float(cpus_per_run), 0.0
    gpus = 1.0 if gpus_per_run is None else gpus_per_run
    # Ray accepts a fraction below one GPU (several small networks share one) or whole GPUs.
    if not (isinstance(gpus, (int, float)) and 0 < gpus <= 64 and (gpus < 1 or float(gpus).is_integer())):
        raise ExciteError(f"gpus per run {gpus!r} is not valid; expected a fraction in (0, 1) or a whole number 1-64")
    return float(cpus_per_run), float(gpus)


def _collect(ray, session, refs: dict) -> None:
    """Record each task's run as it returns; on any failure or Ctrl-C, cancel the rest (their runs
    stay without a row, so the next session redoes them)."""
    try:
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            run = refs.pop(ready[0])
            try:
                result, files, machine = ray.get(ready[0])
            except ray.exceptions.RayError as e:
                raise _task_error(ray, run, e) from None
            partial = session.prepare(run)
            partial.mkdir(parents=True, exist_ok=True)
            _write_files(partial, files)
            session.record(run, result, machine=machine)
    finally:
        for ref in refs:
            ray.cancel(ref, force=True)


def run_study_ray(study: Study | str, folder: str | Path, *, address: str | None = None, trainer=None,
                  device: str = "cpu", cpus_per_run: float = 1, gpus_per_run: float | None = None,
                  max_retries: int = 3, num_cpus: int | None = None, overwrite: bool = False,
                  log: Callable[[str], None] | None = print, trust_code=None) -> dict:
    """Run every grid point of ``study`` missing from ``folder``'s database as Ray tasks.

    Args:
        study, folder, trainer, overwrite, log: as for :func:`excite.study.runner.run_study`; the same
            folder may be continued by either runner.
        address: a running cluster (``HOST:PORT`` of its head, ``auto``), or ``None`` to start a local
            one (``num_cpus`` CPUs) that ends with the call. An existing ``ray.init()`` is used as is.
        device: ``cpu`` or ``cuda``; with ``cuda`` each run asks for ``gpus_per_run`` GPUs (default 1;
            a fraction such as 0.25 lets four small networks share a GPU).
        cpus_per_run: CPUs each run asks for; it trains with as many threads.
        max_retries: how often a run whose worker died is started again.
        trust_code: the code references the study file may run (see :mod:`excite.core.trust`); the
            workers get exactly this grant.

    Returns ``{"total", "skipped", "done"}`` counts. Bad input (an unreachable address, resources no
    node has, code a worker cannot import) is an :class:`ExciteError` before anything is written.
    """
    cpus, gpus = _resources(device, cpus_per_run, gpus_per_run)
    with allow_code(trust_code):
        study, _ = check_study(study, trainer)
        trusted = tuple(granted())
    ray = _import_ray()
    owned = connect(address, num_cpus=num_cpus, quiet=log is None)
    try:
        check_resources(cpus, gpus)
        cwd = os.getcwd()
        options = dict(num_cpus=cpus, num_gpus=gpus)
        check = ray.remote(_check_worker).options(**options, max_retries=0)
        ready, _ = ray.wait([ref := check.remote(trainer, study, cwd, trusted)], timeout=CHECK_TIMEOUT_S)
        if not ready:
            ray.cancel(ref, force=True)
            raise ExciteError(f"no Ray worker with {cpus:g} CPUs and {gpus:g} GPUs was free in {CHECK_TIMEOUT_S:.0f} s")
        problem = ray.get(ref)
        if problem:
            raise ExciteError(f"a Ray worker cannot load the study's code: {problem}")
        task = ray.remote(_train_run)
        threads = max(1, math.floor(cpus))
        with open_study(study, folder, overwrite=overwrite, log=log, here=False) as session:
            refs = {task.options(**options, max_retries=max_retries, retry_exceptions=False, name=f"excite-run {run_id(r)}")
                    .remote(trainer, r, cwd, threads, "cuda:0" if gpus else "cpu", trusted): r for r in session.todo}
            _collect(ray, session, refs)
        return session.counts()
    finally:
        if owned:
            ray.shutdown()
