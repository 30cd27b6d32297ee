"""Where a command's work runs, written once for every command that can spread over ranks.

In this process; in N processes started here through torch's elastic launcher (torchrun's
engine), on one node or several; or, under ``torchrun`` or ``srun``, as this process's rank of
the job they started. Each process then joins the group (``distributed.init_distributed``)
and takes its share of the work.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Workers:
    """How many processes: ``gpus`` per node (NCCL), else ``nproc`` CPU processes (gloo),
    on ``nnodes`` nodes that meet at ``master_addr:master_port`` within ``rdzv_timeout`` s."""

    gpus: int = 0
    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    rdzv_timeout: int = 900

    def per_node(self) -> int:
        """Processes per node (one line for counts this machine cannot run)."""
        from .distributed import check_processes  # torch: not imported before work starts

        return check_processes(self.gpus, self.nproc)

    def world_size(self) -> int:
        """Processes in all, when this process starts them (torchrun/SLURM say their own)."""
        return self.per_node() * self.nnodes

    def device(self, device: str) -> str:
        """The device each process uses: GPUs ask for CUDA whatever ``device`` says."""
        return "cuda" if self.gpus > 0 and not device.startswith("cuda") else device

    def run(self, worker: Callable[..., Any], args: tuple[Any, ...], **here: Any) -> Any:
        """``worker(*args)``: here (with the ``here`` keyword arguments, which need not be
        picklable) when one process is asked or this one is already a rank of torchrun or
        SLURM; else in launched processes, and None once they have all finished."""
        if launched_externally() or self.world_size() == 1:
            return worker(*args, **here)
        from .distributed import launch  # torch: not imported before work starts

        launch(worker, args, self.per_node(), self.nnodes, self.node_rank, self.master_addr,
               self.master_port, self.rdzv_timeout)  # fmt: skip
        return None


def launched_externally() -> bool:
    """True inside torchrun or a multi-task SLURM job: the workers already exist."""
    return "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1
