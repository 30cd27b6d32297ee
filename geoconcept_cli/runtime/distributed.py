"""torch.distributed setup shared by `train` and `embed-images`.

Three ways in, one code path: a process started by ``torchrun`` (RANK/WORLD_SIZE/... in the
environment), a SLURM task (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID), or our own ``--gpus N``
/ ``--nproc N``, which starts the workers through torch's elastic launcher (torchrun's engine).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist

from ..errors import GeoconceptError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _adopt_slurm_env(master_addr: str | None, master_port: int) -> None:
    """Translate SLURM's task variables into the ones torch.distributed reads."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    addr = master_addr or os.environ.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_ADDR", addr)
    os.environ.setdefault("MASTER_PORT", str(master_port))


def check_processes(gpus: int, nproc: int = 1) -> int:
    """Processes per node for --gpus / --nproc, with one-line errors for impossible counts."""
    if gpus < 0 or nproc < 1:
        raise GeoconceptError("--gpus must be >= 0 and --nproc >= 1")
    if gpus > torch.cuda.device_count():
        raise GeoconceptError(
            f"--gpus {gpus}, but this machine has {torch.cuda.device_count()} CUDA GPUs"
        )
    return gpus or nproc


def is_main_process() -> bool:
    """Rank 0 of torchrun or of a multi-task SLURM job, or a process outside any group
    (whether or not init_distributed has run: a rerun with nothing to do never calls it)."""
    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ.get("SLURM_PROCID", "0")) == 0
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(use_cuda: bool, master_addr: str | None = None, master_port: int = 29500
                     ) -> DistInfo:  # fmt: skip
    """Join the process group if this process is one of several; else a single-process info."""
    _adopt_slurm_env(master_addr, master_port)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world == 1:
        return DistInfo(device=device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, device)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (for a one-node rendezvous, as torchrun --standalone)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return cast(int, sock.getsockname()[1])  # (host, port) for IPv4; typed Any


def launch(
    fn: Callable[..., object],
    args: tuple[Any, ...],
    nproc: int,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int = 29500,
    rdzv_timeout: int = 900,
) -> None:
    """Run ``fn(*args)`` in ``nproc`` processes on each of ``nnodes`` nodes (torchrun's engine).

    One node rendezvous on a free port (``master_port`` is for nodes that must agree on one),
    so a second run on the same machine does not collide with the first. Nodes that do not
    all meet within ``rdzv_timeout`` seconds (torchrun's 900 by default), or a port already in
    use, stop with one line instead of a C++ stack.
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nnodes == 1:
        master_addr, master_port = "127.0.0.1", free_port()

    config = LaunchConfig(
        min_nodes=nnodes,
        max_nodes=nnodes,
        nproc_per_node=nproc,
        run_id="geoconcept",  # every node must name the same run, or none ever meets
        rdzv_backend="static",  # like torchrun --node-rank: fixed node ranks, no discovery
        rdzv_endpoint=f"{master_addr}:{master_port}",
        rdzv_configs={"rank": node_rank, "timeout": rdzv_timeout},
        max_restarts=0,
        start_method="spawn",
        monitor_interval=0.5,
    )
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        elastic_launch(config, fn)(*args)
    except SignalException:  # Ctrl-C or a kill reached the launcher: as in one process
        raise KeyboardInterrupt from None
    except dist.DistError as exc:  # the rendezvous store: port taken, nobody came
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        if "EADDRINUSE" in str(exc) or "in use" in str(exc):
            raise GeoconceptError(
                f"port {master_port} is in use on this machine ({first}); pass another "
                "--master-port to every node"
            ) from None
        raise GeoconceptError(
            f"node {node_rank} of {nnodes}: the nodes did not all meet at {master_addr}:"
            f"{master_port} within {rdzv_timeout} s ({first}); start every node with the same "
            "--nnodes, --master-addr and --master-port"
        ) from None
    except ChildFailedError as exc:
        failed = ", ".join(f"rank {r}" for r in sorted(exc.failures))
        raise GeoconceptError(
            f"worker process failed ({failed}); its error is printed above"
        ) from None


def all_gather_with_grad(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate ``x`` from every rank, keeping the autograd graph to each rank's part."""
    if info.world_size == 1:
        return x
    from torch.distributed.nn.functional import all_gather  # autograd-aware

    with warnings.catch_warnings():  # deprecated in favour of a private API: not yet
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(x))


def mean_across_ranks(value: float, info: DistInfo) -> float:
    """Average a Python number over ranks (for logging the global loss)."""
    if info.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def same_on_all_ranks(value: int, info: DistInfo) -> bool:
    """Whether every rank holds the same integer (e.g. the step a run resumes from)."""
    if info.world_size == 1:
        return True
    t = torch.tensor([value, -value], dtype=torch.int64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # (max, -min)
    return int(t[0]) == -int(t[1])


@contextmanager
def all_or_none(info: DistInfo, doing: str) -> Iterator[None]:
    """A step that every rank takes, and that fails on all ranks when it fails on one: each
    rank then says whether it got through, so none waits at a later collective for a rank
    that has left (srun stops no one; NCCL would wait until the group's timeout). The step's
    end is a barrier. Every rank takes the same steps in the same order, and a step holds no
    collective of its own (a rank failing before it would meet the others at another call)."""
    if info.world_size == 1:
        yield
        return
    try:
        yield
    except BaseException as exc:
        if not isinstance(exc, KeyboardInterrupt):  # srun and torchrun pass Ctrl-C to all
            _all_ok(False, info)
        raise
    if not _all_ok(True, info):
        raise GeoconceptError(f"another rank failed while {doing}; its error is in its output")


def _all_ok(ok: bool, info: DistInfo) -> bool:
    t = torch.tensor([int(ok)], dtype=torch.int64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())
