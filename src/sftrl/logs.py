"""Job logging: everything a workflow job prints goes to its ``log:`` file."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def job_log(path: str | os.PathLike, threads: int | None = None) -> Iterator[None]:
    """Send stdout, stderr (progress bars) and ``logging`` to ``path``; set torch's CPU threads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if threads:
        import torch

        torch.set_num_threads(threads)
    with open(path, "w", buffering=1) as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
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
