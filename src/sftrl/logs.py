"""Job logging: everything a workflow job prints goes to its ``log:`` file."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path


def job_environment() -> str:
    """One line: host, SLURM job id and visible GPUs of this process ("-" where unset)."""
    env = {k: os.environ.get(k, "-") for k in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES")}
    return f"job: host={socket.gethostname()} " + " ".join(f"{k}={v}" for k, v in env.items())


@contextlib.contextmanager
def job_log(path: str | os.PathLike, threads: int | None = None) -> Iterator[None]:
    """Send stdout, stderr (progress bars) and ``logging`` to ``path``; set torch's CPU threads.

    The first line records where the job ran: host, SLURM job id and the GPUs it was given
    (``CUDA_VISIBLE_DEVICES``), so a cluster run's logs show what each job got."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if threads:
        import torch

        torch.set_num_threads(threads)
    with open(path, "w", buffering=1) as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        print(job_environment(), file=fh)
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield
        except BaseException:
            import traceback

            traceback.print_exc(file=fh)
            raise
        finally:
            root.removeHandler(handler)
            sys.stdout.flush()
