"""Streaming access to Hugging Face safetensors checkpoints: read one tensor at a time, write shards.

A checkpoint directory holds `config.json` and either one `model.safetensors` or shards listed in
`model.safetensors.index.json`. Readers open a shard per tensor (`safetensors.safe_open`), so only
that tensor is ever resident; `ShardWriter` appends tensors to disk as they come, so writing a model
never holds more than one tensor either. Outputs are atomic: they are built in a hidden sibling
directory (or file) and renamed into place when complete.

Tied weights need no special case: a tied model stores only `model.embed_tokens.weight`, and
whatever tensors are in the files are what is read and written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from sftrl.atomic import atomic_path


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` on a 64-byte boundary: itself when it is there, else a copy by torch's allocator.

    A tensor read from a safetensors file sits wherever its bytes landed (seen 32 bytes off a
    64-byte boundary here, and varying between processes). MKL picks kernels by alignment, so
    matmuls and SVDs of such tensors can differ in the last bits from run to run -- and principal
    angles near 0° magnify that (arccos) to ~0.004°. With every read tensor on a
    64-byte boundary, the same inputs give the same bits (tests/test_spectrum.py)."""
    if t.data_ptr() % 64 == 0 and t.is_contiguous():
        return t  # already where a copy would put it: spare the copy (GBs per checkpoint at paper scale)
    return t.clone(memory_format=torch.contiguous_format)


SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
# Copied next to the weights by ShardWriter(copy_from=...) when present in the source.
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
)
DEFAULT_MAX_SHARD_BYTES = 5_000_000_000  # Hugging Face's "5GB"

_DTYPE_CODES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}


_DTYPES_BY_CODE = {code: dtype for dtype, code in _DTYPE_CODES.items()}


class CheckpointError(ValueError):
    """A directory is not a usable checkpoint, or two checkpoints are incompatible."""


def natural_key(name: str) -> list:
    # "layers.10" sorts after "layers.9", so tensors come out in model order.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class Checkpoint:
    """Tensor names, shapes and dtypes of a checkpoint directory, read from the safetensors headers.

    Constructing one validates the directory and raises `CheckpointError` naming what is wrong.
    `read(name)` loads exactly one tensor.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: not a directory")
        if not (self.path / CONFIG_FILE).is_file():
            raise CheckpointError(f"{self.path}: no {CONFIG_FILE}, so not a Hugging Face checkpoint")
        index = self.path / INDEX_FILE
        if index.is_file():
            weight_map = _read_weight_map(index)
        elif (self.path / SINGLE_FILE).is_file():
            weight_map = None
        else:
            other = sorted(p.name for p in self.path.glob("*.bin"))
            hint = f" (found {', '.join(other)}: convert to safetensors first)" if other else ""
            raise CheckpointError(f"{self.path}: no {SINGLE_FILE} or {INDEX_FILE}{hint}")

        files = sorted(set(weight_map.values())) if weight_map is not None else [SINGLE_FILE]
        self._file: dict[str, Path] = {}
        self._shape: dict[str, tuple[int, ...]] = {}
        self._dtype: dict[str, str] = {}
        for file in files:
            shard = self.path / file
            if not shard.is_file():
                raise CheckpointError(f"{self.path}: the index lists {file}, which is missing")
            try:
                with safe_open(shard, framework="pt") as f:
                    for name in f.keys():
                        view = f.get_slice(name)
                        self._file[name] = shard
                        self._shape[name] = tuple(view.get_shape())
                        self._dtype[name] = view.get_dtype()
            except Exception as e:  # safetensors raises its own error types for corrupt files
                raise CheckpointError(f"{shard}: not a readable safetensors file ({e})") from None
        if weight_map is not None:
            missing = sorted(set(weight_map) - set(self._file))
            if missing:
                raise CheckpointError(
                    f"{self.path}: the index lists {len(missing)} tensor(s) missing from the shards, e.g. {missing[0]}"
                )
        self.names: list[str] = sorted(self._file, key=natural_key)

    def __contains__(self, name: str) -> bool:
        return name in self._file

    def shape(self, name: str) -> tuple[int, ...]:
        self._check(name)
        return self._shape[name]

    def dtype(self, name: str) -> str:
        """The safetensors dtype code, e.g. "BF16"."""
        self._check(name)
        return self._dtype[name]

    def torch_dtype(self, name: str) -> torch.dtype:
        return _DTYPES_BY_CODE[self.dtype(name)]

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: self._shape[name] for name in self.names}

    def read(self, name: str) -> torch.Tensor:
        self._check(name)
        # A fresh handle per tensor: the mapping is closed again, so pages of earlier tensors
        # do not accumulate in the resident set.
        try:
            with safe_open(self._file[name], framework="pt") as f:
                return aligned(f.get_tensor(name))
        except Exception as e:  # the file changed or broke since its header was read
            raise CheckpointError(f"{self._file[name]}: cannot read tensor {name} ({e})") from None

    def _check(self, name: str) -> None:
        if name not in self._file:
            raise CheckpointError(f"{self.path}: no tensor named {name}")


MAX_INDEX_BYTES = 64 << 20  # an index of a 400B-parameter model is ~100 kB


def _read_weight_map(index: Path) -> dict[str, str]:
    """The index's ``weight_map``: tensor name -> shard file name in the same directory."""
    if index.stat().st_size > MAX_INDEX_BYTES:
        raise CheckpointError(f"{index}: {index.stat().st_size} bytes, too large for an index")
    try:
        weight_map = json.loads(index.read_bytes())["weight_map"]
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise CheckpointError(f"{index}: unreadable index ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(weight_map, dict) or not weight_map:
        got = type(weight_map).__name__ if weight_map else "nothing"
        raise CheckpointError(f"{index}: 'weight_map' must map tensor names to shard files, got {got}")
    for name, file in weight_map.items():
        plain = isinstance(file, str) and file not in ("", ".", "..") and not any(c in file for c in "/\\\0")
        if not plain:
            raise CheckpointError(
                f"{index}: tensor {name[:100]!r} maps to {str(file)[:100]!r}; "
                "expected the name of a shard file in the same directory"
            )
    return weight_map


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None` → the GPU when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# --- Hugging Face checkpoint directories (what model.path must be) ---------------------------------


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# model_type values of checkpoints the workflow loads: AutoModelForCausalLM's, plus mllama
# (Llama-3.2-Vision, reduced to its text model; see sftrl.models). Read from transformers when it
# is importable, so a new architecture it supports is known too.
KNOWN_MODEL_TYPES = ("llama", "mllama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3")


def _known_model_types() -> set[str]:
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover - transformers is a dependency
        return set(KNOWN_MODEL_TYPES)
    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) | {"mllama"}


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a safetensors file (its header: 8-byte length, then JSON), or None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            size = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 2 <= size <= 100_000_000:
                return "not a safetensors file (no header)"
            header = json.loads(fh.read(size))
        if not isinstance(header, dict):
            return "not a safetensors file (its header is not a JSON object)"
    except (OSError, ValueError, RecursionError) as e:
        return f"not readable as safetensors ({_clip(str(e), 120)})"
    return None


def checkpoint_dir_problems(path: Path, where: str, seen: str = "") -> list[str]:
    """Why ``path`` is not a Hugging Face checkpoint directory the workflow can load (the first
    reason, starting with ``where``), or []: it must hold a config.json whose ``model_type`` is a
    causal LM transformers knows, and safetensors weights (every shard an index names; the headers
    of the first and last shard are read)."""
    expected = "expected a local Hugging Face checkpoint directory (config.json + *.safetensors)"
    if not path.exists():
        return [f"{where} does not exist{seen}; {expected}"]
    if not path.is_dir():
        return [f"{where} is not a directory; {expected}"]
    try:
        conf = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        return [f"{where} has no config.json; {expected}"]
    except (OSError, ValueError, RecursionError) as e:
        return [f"{where}/config.json is not readable JSON ({_clip(str(e), 120)})"]
    model_type = conf.get("model_type") if isinstance(conf, dict) else None
    if not isinstance(model_type, str) or model_type not in _known_model_types():
        return [
            f"{where}/config.json: model_type {repr(model_type)[:200]} is not a causal language model "
            f"transformers can load (e.g. {', '.join(KNOWN_MODEL_TYPES)})"
        ]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return [f"{where}/{index.name} is not a safetensors index (no weight_map)"]
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            return [f"{where}: {index.name} names shards that are missing: {_clip(', '.join(missing))}"]
        weights = [path / s for s in shards]
    else:
        weights = sorted(path.glob("*.safetensors"))
    if not weights:
        return [f"{where} holds no weights (*.safetensors); {expected}"]
    for file in weights[:1] + weights[-1:]:  # the headers of the first and last shard
        problem = _safetensors_problem(file)
        if problem:
            return [f"{where}/{file.name}: {problem}"]
    return []


class _AtomicWriter:
    """A writer whose output is built at a temporary sibling (`sftrl.atomic.atomic_path`):
    `close()` finishes it and renames it into place, `abort()` removes it; `with` does either."""

    def _begin(self, path: Path, directory: bool) -> Path:
        self._atomic = contextlib.ExitStack()
        return self._atomic.enter_context(atomic_path(path, directory=directory))

    def _commit(self) -> None:
        self._atomic.close()  # atomic_path's success branch: rename into place

    def _discard(self) -> None:
        aborted = RuntimeError("writer aborted")
        self._atomic.__exit__(RuntimeError, aborted, None)  # atomic_path's failure branch: remove

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


class SafetensorsWriter(_AtomicWriter):
    """Writes one safetensors file tensor by tensor, holding none of them in memory.

    Tensor bytes are appended to a data file beside the target; `close()` writes the header and
    then streams the data after it (the header must come first and is only known at the end).
    The finished file appears at `path` by an atomic rename; `abort()` removes the pieces.
    """

    def __init__(self, path: str | os.PathLike, metadata: Mapping[str, str] | None = None):
        self.path = Path(path)
        self.metadata = {"format": "pt", **(metadata or {})}
        self._partial = self._begin(self.path, directory=False)
        self._data_path = self._partial.with_name(self._partial.name + ".data")
        self._data = open(self._data_path, "wb")
        self._header: dict[str, dict] = {}
        self.nbytes = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        assert name not in self._header, f"tensor {name} written twice"
        assert name != "__metadata__"
        if tensor.dtype not in _DTYPE_CODES:
            raise TypeError(f"{name}: dtype {tensor.dtype} has no safetensors code")
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        raw = flat.view(torch.uint8).numpy() if flat.numel() else b""  # a view: no copy
        self._header[name] = {
            "dtype": _DTYPE_CODES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [self.nbytes, self.nbytes + len(raw)],
        }
        self._data.write(raw)
        self.nbytes += len(raw)

    def close(self) -> Path:
        self._data.close()
        header = json.dumps({"__metadata__": self.metadata, **self._header}, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)  # align the data to 8 bytes, as safetensors does
        with open(self._partial, "wb") as out, open(self._data_path, "rb") as data:
            out.write(struct.pack("<Q", len(header)))
            out.write(header)
            shutil.copyfileobj(data, out, 8 << 20)
        self._data_path.unlink()
        self._commit()
        return self.path

    def abort(self) -> None:
        self._data.close()
        self._data_path.unlink(missing_ok=True)
        self._discard()


class ShardWriter(_AtomicWriter):
    """Writes a checkpoint directory tensor by tensor, in shards of at most `max_shard_bytes`.

        with ShardWriter(out_dir, copy_from=target_dir) as out:
            for name in names:
                out.write(name, tensor)

    The directory is built in a hidden sibling (`sftrl.atomic.atomic_path`) and renamed to `out_dir`
    on a clean exit, so a killed job never leaves a directory that looks complete (a stale hidden
    `.<name>.*.tmp` sibling may remain; it is safe to delete). One shard is written as
    `model.safetensors`; several as `model-0000i-of-0000n.safetensors` plus
    `model.safetensors.index.json`, as `save_pretrained` does. A tensor larger than
    `max_shard_bytes` gets a shard of its own. `SIDE_FILES` present in `copy_from` (config,
    generation config, tokenizer) are copied along. An existing non-empty `out_dir` is refused.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        copy_from: str | os.PathLike | None = None,
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
        side_files: Iterable[str] = SIDE_FILES,
    ):
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and (not self.out_dir.is_dir() or any(self.out_dir.iterdir())):
            raise CheckpointError(f"{self.out_dir}: already exists; remove it first")
        if max_shard_bytes <= 0:
            raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
        self.copy_from = Path(copy_from) if copy_from is not None else None
        self.max_shard_bytes = max_shard_bytes
        self.side_files = tuple(side_files)
        self._partial = self._begin(self.out_dir, directory=True)
        self._shards: list[tuple[Path, list[str]]] = []  # (finished shard file, its tensor names)
        self._current: SafetensorsWriter | None = None
        self._current_names: list[str] = []
        self.names: list[str] = []  # written so far, in order
        self._seen: set[str] = set()
        self.total_bytes = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        assert name not in self._seen, f"tensor {name} written twice"
        nbytes = tensor.numel() * tensor.element_size()
        if self._current is not None and self._current.nbytes + nbytes > self.max_shard_bytes:
            self._finish_shard()
        if self._current is None:
            path = self._partial / f"shard-{len(self._shards) + 1:05d}.safetensors"
            self._current = SafetensorsWriter(path)
        self._current.write(name, tensor)
        self._current_names.append(name)
        self.names.append(name)
        self._seen.add(name)
        self.total_bytes += nbytes

    def _finish_shard(self) -> None:
        assert self._current is not None
        self._shards.append((self._current.close(), self._current_names))
        self._current, self._current_names = None, []

    def close(self) -> Path:
        if self._current is not None:
            self._finish_shard()
        if not self._shards:
            raise CheckpointError(f"{self.out_dir}: no tensors were written")
        n = len(self._shards)
        if n == 1:
            self._shards[0][0].rename(self._partial / SINGLE_FILE)
        else:
            weight_map = {}
            for i, (path, names) in enumerate(self._shards, start=1):
                final = f"model-{i:05d}-of-{n:05d}.safetensors"
                path.rename(self._partial / final)
                weight_map.update(dict.fromkeys(names, final))
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (self._partial / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        if self.copy_from is not None:
            for file in self.side_files:
                if (self.copy_from / file).is_file():
                    shutil.copy2(self.copy_from / file, self._partial / file)
        self._commit()
        return self.out_dir

    def abort(self) -> None:
        if self._current is not None:
            self._current.abort()
            self._current = None
        self._discard()
