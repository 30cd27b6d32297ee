"""Commands run as the tasks of an srun, to test how ranks behave with no torchrun over them."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile


def srun(args: list[str]) -> list[tuple[int, str]]:
    """``geoconcept ARGS`` as the two tasks of an srun (SLURM's variables, no torchrun to stop
    the others when one fails): (exit code, stderr) of each."""
    from geoconcept_cli.runtime.distributed import free_port

    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}  # fmt: skip
    env |= {"SLURM_NTASKS": "2", "SLURM_LAUNCH_NODE_IPADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port())}  # fmt: skip
    logs = [tempfile.TemporaryFile("w+") for _ in range(2)]  # files: no pipe fills and stalls
    procs = [subprocess.Popen([sys.executable, "-m", "geoconcept_cli", *args],
                              env={**env, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
                              stdout=subprocess.DEVNULL, stderr=logs[r], text=True)
             for r in (0, 1)]  # fmt: skip
    try:
        for p in procs:
            p.wait(timeout=300)
    finally:
        for p in procs:
            p.kill()
    errs = []
    for log in logs:
        log.seek(0)
        errs.append(log.read())
        log.close()
    return [(p.returncode, err) for p, err in zip(procs, errs, strict=True)]
