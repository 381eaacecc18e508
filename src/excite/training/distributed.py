"""Several training processes: the process-group setup for ``torchrun`` (gloo on CPU, NCCL on
CUDA; a no-op for a single process) and the launcher behind ``excite train --nproc-per-node N
--nnodes M --node-rank R --rdzv-endpoint HOST:PORT``."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run

from excite.core.errors import ExciteError, check_range


def setup(device: str = "cpu") -> tuple[int, int]:
    """Join the process group if launched by ``torchrun`` (``WORLD_SIZE`` > 1); return ``(rank, world)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def teardown() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# -- launching several processes, on one node or several (torchrun) -----------------------------------

def _endpoint(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> ``(host, port)``, or one line naming the format."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ExciteError(f"--rdzv-endpoint {text!r} is not HOST:PORT (node 0's address and a free port, "
                          "e.g. node0:29500)")
    return host, int(port)


def torchrun_args(*, nproc_per_node: int = 1, nnodes: int = 1, node_rank: int | None = None,
                  rdzv_endpoint: str | None = None, rdzv_id: str = "excite") -> list[str]:
    """The ``torchrun`` options for ``nproc_per_node`` processes on each of ``nnodes`` nodes, checked.

    One node: ``--standalone``. Several: *static* rendezvous at ``rdzv_endpoint`` (node 0 hosts it),
    so process ``node_rank * nproc_per_node + local rank`` always has the same global rank: each rank
    takes its fixed slice of every global batch (``engine._train``), and a rerun or ``--resume``
    repeats the same computation. Every node runs the same command but its own ``node_rank``.
    """
    for name, value, low in (("--nproc-per-node", nproc_per_node, 1), ("--nnodes", nnodes, 1)):
        check_range(name, value, low=low, high=4096, integer=True)
    if os.environ.get("TORCHELASTIC_RUN_ID") is not None:
        raise ExciteError("--nproc-per-node/--nnodes: this process was already launched by torchrun; "
                          "give them to torchrun or to excite train, not both")
    if nnodes == 1 and rdzv_endpoint is None:
        if node_rank not in (None, 0):
            raise ExciteError(f"--node-rank {node_rank}: with --nnodes 1 the only node is 0")
        return ["--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc_per_node)]
    if rdzv_endpoint is None or node_rank is None:
        raise ExciteError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (node 0's address) and "
                          f"--node-rank (0 to {nnodes - 1}, different on every node)")
    check_range("--node-rank", node_rank, low=0, high=nnodes - 1, integer=True)
    _endpoint(rdzv_endpoint)
    return ["--nnodes", str(nnodes), "--nproc-per-node", str(nproc_per_node), "--node-rank", str(node_rank),
            "--rdzv-backend", "static", "--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", rdzv_id]


def launch(command: list[str], *, nproc_per_node: int = 1, nnodes: int = 1, node_rank: int | None = None,
           rdzv_endpoint: str | None = None) -> int:
    """Run ``python -m excite COMMAND...`` as this node's share of a ``torchrun`` job (torch's own
    launcher, in this process); return the exit status (the first failed process's, else 0)."""
    options = torchrun_args(nproc_per_node=nproc_per_node, nnodes=nnodes, node_rank=node_rank,
                            rdzv_endpoint=rdzv_endpoint)
    try:
        run(get_args_parser().parse_args([*options, "-m", "excite", *command]))
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        return next((c for c in codes if c and c > 0), 1)
    return 0
