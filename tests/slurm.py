"""Commands run as the tasks of an srun, to test how ranks behave with no torchrun over them."""

from __future__ import annotations

import os
import subprocess
import sys


def srun(args: list[str]) -> list[tuple[int, str]]:
    """``geoconcept ARGS`` as the two tasks of an srun (SLURM's variables, no torchrun to stop
    the others when one fails): (exit code, stderr) of each."""
    from geoconcept_cli.distributed import free_port

    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}  # fmt: skip
    env |= {"SLURM_NTASKS": "2", "SLURM_LAUNCH_NODE_IPADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port())}  # fmt: skip
    procs = [subprocess.Popen([sys.executable, "-m", "geoconcept_cli", *args],
                              env={**env, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]  # fmt: skip
    try:
        errs = [p.communicate(timeout=300)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [(p.returncode, err) for p, err in zip(procs, errs, strict=True)]
