"""Job logging: everything a workflow job prints goes to its ``log:`` file."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path


def job_environment() -> str:
    """One line: host, SLURM job id and visible GPUs of this process ("-" where unset)."""
    env = {k: os.environ.get(k, "-") for k in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES")}
    return f"job: host={socket.gethostname()} " + " ".join(f"{k}={v}" for k, v in env.items())


def process_age() -> float | None:
    """Seconds since this process started (Linux's /proc), None where that cannot be read."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))  # field 22: starttime
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class ImportClock:
    """Seconds the main thread spends loading modules inside a ``with`` block.

    Times the outermost calls of importlib's ``_find_and_load``, which loads every module not yet
    in ``sys.modules``, whether by an ``import`` statement or by ``importlib.import_module`` (the
    lazy modules of transformers): the figure ``python -X importtime`` reports, for the imports a
    job makes while it runs. ``seconds`` stays None where importlib lacks that hook.
    """

    def __init__(self):
        self.seconds: float | None = None
        self._bootstrap = self._original = None

    def __enter__(self) -> ImportClock:
        import importlib._bootstrap as bootstrap

        original = getattr(bootstrap, "_find_and_load", None)
        if original is None:
            return self
        self.seconds, depth, main = 0.0, [0], threading.get_ident()

        def timed(name, import_):
            if depth[0] or threading.get_ident() != main:
                return original(name, import_)
            depth[0] += 1
            tic = time.perf_counter()
            try:
                return original(name, import_)
            finally:
                self.seconds += time.perf_counter() - tic
                depth[0] -= 1

        self._bootstrap, self._original = bootstrap, original
        bootstrap._find_and_load = timed
        return self

    def __exit__(self, *exc) -> None:
        if self._bootstrap is not None:
            self._bootstrap._find_and_load = self._original


def job_timing(before: float | None, imports: float | None, body: float) -> str:
    """The last line of a job's log: its start-up and import time beside its work.

    ``before``: process start to the job's code (interpreter, Snakemake's script preamble, the
    script's imports); ``imports``: modules loaded while the job ran; ``body``: the job's code.
    ``benchmarks/study_time.py`` reads these lines back."""
    if before is None or imports is None:
        return f"job: timing: {body:.2f} s in the job's code (start-up not measurable here)"
    return (
        f"job: timing: imports {before + imports:.2f} s ({before:.2f} s before the job's code, "
        f"{imports:.2f} s inside it), other work {body - imports:.2f} s"
    )


@contextlib.contextmanager
def job_log(path: str | os.PathLike, threads: int | None = None) -> Iterator[None]:
    """Send stdout, stderr (progress bars) and ``logging`` to ``path``; set torch's CPU threads.

    The first line records where the job ran: host, SLURM job id and the GPUs it was given
    (``CUDA_VISIBLE_DEVICES``), so a cluster run's logs show what each job got; the last line
    (``job_timing``) how long it took to start and import what it needs, beside its work."""
    before = process_age()  # everything until here is start-up: interpreter, preamble, imports
    tic = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with ImportClock() as clock:
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
                print(job_timing(before, clock.seconds, time.perf_counter() - tic), file=fh)
            except BaseException:
                import traceback

                traceback.print_exc(file=fh)
                raise
            finally:
                root.removeHandler(handler)
                sys.stdout.flush()


# --- training metrics beside the JSONL files: TensorBoard or Weights & Biases -------------------

REPORT_TO = ("none", "tensorboard", "wandb")  # `logging.report_to` in the config


def truncate_metrics(path: Path, last_update: int) -> None:
    """Keep the rows of updates <= ``last_update`` of an RL metrics file (an interrupted run may
    have logged past its resumable state)."""
    import json

    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["update"] <= last_update]
    path.write_text("".join(row + "\n" for row in rows))


def tensorboard_dir(log: str | os.PathLike) -> str:
    """Where a training job's TensorBoard events go: ``logs/tensorboard/<run>`` beside the job's
    ``logs/<stage>/<run>.log``, so ``tensorboard --logdir results/<study>/logs/tensorboard``
    shows every run."""
    log = Path(log)
    return str(log.parent.parent / "tensorboard" / log.stem)


class MetricsReporter:
    """Sends each logged row (a dict of numbers) to TensorBoard or Weights & Biases as well.

    ``report_to`` is ``logging.report_to``: ``none`` does nothing; ``tensorboard`` writes event
    files to ``logging_dir`` (offline); ``wandb`` starts a run named ``run_name`` with the
    environment's settings (``WANDB_PROJECT``, ``WANDB_MODE``, ...). Only the main process of a
    launched job reports (the caller creates the reporter there)."""

    def __init__(self, report_to: str, logging_dir: str | os.PathLike | None, run_name: str | None = None):
        if report_to not in REPORT_TO:
            raise ValueError(f"logging.report_to: expected one of {', '.join(REPORT_TO)}, got {report_to!r}")
        self._tb = self._wandb = None
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(logging_dir))
        elif report_to == "wandb":
            import wandb

            self._wandb = wandb.init(name=run_name, dir=str(logging_dir) if logging_dir else None)

    def log(self, row: dict, step: int) -> None:
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for name, value in scalars.items():
                self._tb.add_scalar(name, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
