"""Resumable training state as data: tensors in safetensors files, everything else in JSON.

State directories live on shared file systems, where anyone who can write there can replace a
file; unpickling a replaced file runs its code. So nothing here is a pickle: a nested structure of
dicts, lists, tuples, numbers, strings and tensors (an optimiser's or a scheduler's
``state_dict()``, the RNG states) is stored as a JSON skeleton plus a safetensors file of its
tensors (:func:`save_tree` / :func:`load_tree`), and model weights with ``safetensors.torch``.
Reading a state never executes anything, whatever the files hold: a file that is not what it
should be raises :class:`StateError` naming it.

The JSON skeleton is plain JSON with three tagged forms: ``{"__tensor__": "t3"}`` (tensor ``t3``
of the safetensors file), ``{"__tuple__": [...]}`` and ``{"__items__": [[key, value], ...]}`` (a
dict whose keys are not all plain strings, e.g. an optimiser's parameter ids).
"""

from __future__ import annotations

import json
import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "sftrl-state-1"  # written into every state's progress file; older (pickled) states lack it
MAX_JSON_BYTES = 256 << 20  # a skeleton is kilobytes; refuse to parse anything absurd


class StateError(ValueError):
    """A training-state file is missing, malformed or not of this format; the message names it."""


# --- nested structures ---------------------------------------------------------------------------


def _encode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu")
        if not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone(memory_format=torch.contiguous_format)  # a view: safetensors wants own storage
        key = f"t{len(tensors)}"
        tensors[key] = t
        return {"__tensor__": key}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{where}.{k}") for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"{where}: a dict key of type {type(k).__name__} cannot be stored")
            items.append([k, _encode(v, tensors, f"{where}[{k!r}]")])
        return {"__items__": items}
    raise TypeError(f"{where}: a {type(obj).__name__} cannot be stored in a training state (data only)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        raise StateError(f"{where}: unexpected JSON value of type {type(obj).__name__}")
    tags = [k for k in obj if k.startswith("__")]
    if not tags:
        return {k: _decode(v, tensors, where) for k, v in obj.items()}
    if len(obj) != 1:
        raise StateError(f"{where}: malformed tagged value with keys {sorted(obj)[:5]}")
    tag, value = next(iter(obj.items()))
    if tag == "__tensor__":
        if not isinstance(value, str) or value not in tensors:
            raise StateError(f"{where}: refers to tensor {str(value)[:40]!r}, which is not in its tensor file")
        return tensors[value]
    if tag == "__tuple__" and isinstance(value, list):
        return tuple(_decode(v, tensors, where) for v in value)
    if tag == "__items__" and isinstance(value, list):
        out = {}
        for item in value:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], (str, int))):
                raise StateError(f"{where}: malformed dict item")
            out[item[0]] = _decode(item[1], tensors, where)
        return out
    raise StateError(f"{where}: unknown tag {tag[:40]!r}")


def save_tree(obj: Any, directory: str | os.PathLike, name: str) -> None:
    """Write ``obj`` as ``<name>.json`` (+ ``<name>.safetensors`` when it holds tensors)."""
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(obj, tensors, name)
    if tensors:
        save_file(tensors, directory / f"{name}.safetensors")
    (directory / f"{name}.json").write_text(json.dumps({"format": FORMAT, "tree": skeleton}))


def read_json(path: Path) -> Any:
    """A JSON file of a state, size-checked; :class:`StateError` naming it when it is not JSON."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise StateError(f"{path}: {path.stat().st_size} bytes, more than a state file can hold")
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise StateError(f"{path}: missing from the training state") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, StateError):
            raise
        raise StateError(f"{path}: not a JSON file of a training state ({str(e)[:200]})") from None


def load_tree(directory: str | os.PathLike, name: str) -> Any:
    """Read what :func:`save_tree` wrote (tensors on the CPU)."""
    directory = Path(directory)
    doc = read_json(directory / f"{name}.json")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "tree" not in doc:
        raise StateError(f"{directory / f'{name}.json'}: not a training-state file of format {FORMAT}")
    tensor_file = directory / f"{name}.safetensors"
    tensors = load_tensors(tensor_file) if tensor_file.exists() else {}
    return _decode(doc["tree"], tensors, str(directory / f"{name}.json"))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise StateError(f"{path}: not a readable safetensors file ({str(e)[:200]})") from None


# --- modules -------------------------------------------------------------------------------------


def save_module(module: torch.nn.Module, path: str | os.PathLike) -> None:
    """A module's parameters and buffers (tied weights stored once) as safetensors."""
    from safetensors.torch import save_model

    save_model(module, str(path))


def load_module(module: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load what :func:`save_module` wrote, every tensor present (strict)."""
    from safetensors.torch import load_model

    path = Path(path)
    if not path.is_file():
        raise StateError(f"{path}: missing from the training state")
    try:
        device = next(module.parameters()).device
        load_model(module, str(path), strict=True, device=str(device))
    except (SafetensorError, OSError) as e:
        raise StateError(f"{path}: not a readable safetensors file ({str(e)[:200]})") from None
    except RuntimeError as e:  # missing or unexpected tensors, wrong shapes
        raise StateError(f"{path}: does not fit the model ({str(e)[:300]})") from None


# --- random number generators -----------------------------------------------------------------


def rng_state() -> dict:
    """This process's RNG states (Python, NumPy, torch CPU, and CUDA when present), as data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [str(kind), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: Any, where: str = "rng state") -> None:
    """Restore what :func:`rng_state` returned; :class:`StateError` when it is malformed."""
    try:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise StateError(f"{where}: not an RNG state ({str(e)[:200]})") from None


# --- an accelerate training loop (sftrl.ppo) ----------------------------------------------------

MODEL_FILE = "model.safetensors"
PROGRESS_FILE = "progress.json"  # written last: a state without it is incomplete
TRAINER = "trainer"  # optimiser, scheduler and accelerator step: trainer.json + trainer.safetensors


def _rng_name(rank: int) -> str:
    return f"rng-{rank}"


def _deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def save_training_state(directory: str | os.PathLike, accelerator, model, optimizer, scheduler, progress: dict) -> None:
    """The resumable state of a loop prepared by ``accelerator`` into the existing ``directory``.

    Collective: every process calls it. The main process writes the weights (``model``, unwrapped,
    value head included), the optimiser, scheduler and step (``trainer``) and, last, ``progress``
    (e.g. the update reached) with this format's name (``progress.json``); every process its
    RNG states (``rng-<rank>``). Under DeepSpeed the sharded weights and optimiser are DeepSpeed's
    own checkpoint (``accelerator.save_state``; DeepSpeed reads it back itself, see the README);
    the scheduler and RNG states are data here as everywhere."""
    directory = Path(directory)
    deepspeed = _deepspeed(accelerator)
    if deepspeed:
        accelerator.save_state(str(directory))
    if accelerator.is_main_process:
        trainer = {"step": int(accelerator.step), "scheduler": scheduler.state_dict()}
        if not deepspeed:
            save_module(accelerator.unwrap_model(model), directory / MODEL_FILE)
            trainer["optimizer"] = optimizer.state_dict()
        save_tree(trainer, directory, TRAINER)
    save_tree(rng_state(), directory, _rng_name(accelerator.process_index))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (directory / PROGRESS_FILE).write_text(json.dumps({**progress, "format": FORMAT}))
    accelerator.wait_for_everyone()


def read_progress(directory: str | os.PathLike) -> dict:
    """``progress.json`` of a state; :class:`StateError` for a state of an older format."""
    directory = Path(directory)
    progress = read_json(directory / PROGRESS_FILE)
    if not isinstance(progress, dict) or progress.get("format") != FORMAT:
        raise StateError(
            f"{directory}: a training state of an older format (pickled files, not read for safety); "
            f"delete {directory} to restart this run from its beginning"
        )
    return progress


def load_training_state(directory: str | os.PathLike, accelerator, model, optimizer, scheduler) -> dict:
    """Restore what :func:`save_training_state` wrote, on every process, and return its
    ``progress``. Reads safetensors and JSON only (files such as a pickled
    ``custom_checkpoint_0.pkl`` are never opened)."""
    directory = Path(directory)
    progress = read_progress(directory)
    if _deepspeed(accelerator):
        accelerator.load_state(str(directory))
    else:
        load_module(accelerator.unwrap_model(model), directory / MODEL_FILE)
    trainer = load_tree(directory, TRAINER)
    if not isinstance(trainer, dict) or not isinstance(trainer.get("step"), int) or "scheduler" not in trainer:
        raise StateError(f"{directory / (TRAINER + '.json')}: expected the step and the scheduler state")
    try:
        if not _deepspeed(accelerator):
            if "optimizer" not in trainer:
                raise StateError(f"{directory / (TRAINER + '.json')}: no optimiser state")
            optimizer.load_state_dict(trainer["optimizer"])
        scheduler.load_state_dict(trainer["scheduler"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        if isinstance(e, StateError):
            raise
        raise StateError(f"{directory / (TRAINER + '.json')}: does not fit this run ({str(e)[:200]})") from None
    accelerator.step = trainer["step"]
    rng = _rng_name(accelerator.process_index)
    if (directory / f"{rng}.json").exists():
        set_rng_state(load_tree(directory, rng), str(directory / f"{rng}.json"))
    else:  # saved with fewer processes: the run goes on, its sampling not bit-identical to one run
        warnings.warn(
            f"{directory}: no RNG state for process {accelerator.process_index}; continuing with its seed", stacklevel=2
        )
    return progress
