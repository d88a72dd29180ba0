"""Spectral diagnostics of weight matrices (docs/study.md §7): which matrices, their SVDs, and how two
checkpoints differ in singular values and singular directions.

Everything streams: one matrix of each model is in memory at a time, decomposed in fp32 with
`torch.linalg.svd(full_matrices=False)` on the GPU when there is one.

Files
- `svd_checkpoint` writes `svd/<model>.safetensors`: `<name>.S` (singular values, descending) for
  every analysed matrix and, with `factors=True`, `<name>.U` (rows × n) and `<name>.Vh` (n × cols),
  n = min(rows, cols), all fp32. Metadata: `types`, `factors`.
- `write_spectrum(summary, per_index, "spectrum/<a>--<b>.parquet")` writes the summary table there
  and the per-index table beside it as `spectrum/<a>--<b>.index.parquet` (`index_path`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors import safe_open
from tqdm import tqdm

from sftrl.atomic import write_parquet
from sftrl.checkpoints import Checkpoint, CheckpointError, SafetensorsWriter, aligned, natural_key, resolve_device
from sftrl.constants import BANDS, MATRIX_TYPES

# Language-model decoder layers only: `model.layers.N.` (Llama, Qwen), `language_model.model.layers.N.`
# (Mllama on disk) and `model.language_model.layers.N.` (Mllama in transformers 5). The vision
# tower (`vision_model.transformer.layers.N.`) and Mllama's `cross_attn.*` projections do not match.
LAYER_RE = re.compile(r"(?:^|\.)(?:model|language_model)\.layers\.(\d+)\.")
MATRIX_RE = re.compile(
    r"(?:^|\.)(?:model|language_model)\.layers\.(\d+)\.(?:self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj\.weight$"
)


# ---------------------------------------------------------------------------------------------
# Selecting matrices


def parse_types(spec: str | Iterable[str]) -> str | tuple[str, ...]:
    """`"all"`, `"q,k,v"` or an iterable of `MATRIX_TYPES` members → `"all"` or a tuple of types."""
    if isinstance(spec, str):
        if spec.strip() == "all":
            return "all"
        spec = [t.strip() for t in spec.split(",") if t.strip()]
    types = tuple(spec)
    unknown = [t for t in types if t not in MATRIX_TYPES]
    if unknown or not types:
        raise ValueError(f"matrix types must be 'all' or a list of {','.join(MATRIX_TYPES)}; got {list(types)}")
    return types


def format_types(types: str | tuple[str, ...]) -> str:
    """The inverse of `parse_types`: "all" or "q,k,v"."""
    return types if types == "all" else ",".join(types)


def layer_of(name: str) -> int | None:
    """The decoder-layer index in a tensor name, or None for tensors outside the decoder layers."""
    m = LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def select_matrices(
    names: Iterable[str],
    types: str | Iterable[str],
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> list[tuple[str, int | None, str | None]]:
    """The matrices to analyse or edit, as `(name, layer, type)`.

    `types` is a list of `MATRIX_TYPES` (names matching `MATRIX_RE`) or `"all"`: every 2-D tensor,
    which needs `shapes`; there `type` is None for tensors that are not layer projections
    (embeddings, LM head, vision tower) and `layer` is None outside the decoder layers.
    Sorted by layer (layer-less matrices last), then type in `MATRIX_TYPES` order, then name.
    """
    types = parse_types(types)
    selected = []
    for name in names:
        m = MATRIX_RE.search(name)
        if types == "all":
            if shapes is None:
                raise ValueError("select_matrices(types='all') needs the tensor shapes")
            if len(shapes[name]) == 2:
                selected.append((name, layer_of(name), m.group(2) if m else None))
        elif m and m.group(2) in types:
            selected.append((name, int(m.group(1)), m.group(2)))

    def key(item):
        name, layer, mtype = item
        rank = MATRIX_TYPES.index(mtype) if mtype else len(MATRIX_TYPES)
        return (layer is None, layer or 0, rank, natural_key(name))

    return sorted(selected, key=key)


# ---------------------------------------------------------------------------------------------
# Decompositions


def svd_fp32(w: torch.Tensor, device: str | torch.device | None = None):
    """`U, S, Vh = torch.linalg.svd(w, full_matrices=False)` in fp32 on `device` (None: w's device)."""
    return torch.linalg.svd(w.to(device or w.device, torch.float32), full_matrices=False)


class SvdFile:
    """An SVD file written by `svd_checkpoint`: singular values and, when saved, factors per matrix."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            with safe_open(self.path, framework="pt") as f:
                self.metadata = f.metadata() or {}
                self._shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{self.path}: not a readable safetensors file ({e})") from None
        self.names = sorted((k[: -len(".S")] for k in self._shapes if k.endswith(".S")), key=natural_key)
        if not self.names:
            raise CheckpointError(f"{self.path}: not an SVD file (no '<name>.S' tensors)")

    def has_factors(self, name: str) -> bool:
        return f"{name}.U" in self._shapes and f"{name}.Vh" in self._shapes

    def shape(self, name: str) -> tuple[int, int]:
        """The decomposed matrix's shape (needs its factors)."""
        return (self._shapes[f"{name}.U"][0], self._shapes[f"{name}.Vh"][1])

    def _read(self, key: str) -> torch.Tensor:
        with safe_open(self.path, framework="pt") as f:
            return aligned(f.get_tensor(key))

    def sigma(self, name: str) -> torch.Tensor:
        return self._read(f"{name}.S")

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.has_factors(name):
            raise CheckpointError(f"{self.path}: no factors for {name} (written without factors=True)")
        return self._read(f"{name}.U"), self._read(f"{name}.S"), self._read(f"{name}.Vh")


def svd_checkpoint(
    ckpt_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    types: str | Iterable[str] = MATRIX_TYPES,
    factors: bool = False,
    device: str | torch.device | None = None,
) -> Path:
    """Decompose every selected matrix of a checkpoint, one at a time, into one SVD file (atomic)."""
    ckpt = Checkpoint(ckpt_dir)
    types = parse_types(types)
    device = resolve_device(device)
    selected = select_matrices(ckpt.names, types, ckpt.shapes)
    if not selected:
        raise CheckpointError(f"{ckpt.path}: no matrices of types {types}")
    metadata = {
        "types": format_types(types),
        "factors": str(bool(factors)).lower(),
    }
    with SafetensorsWriter(out_path, metadata) as out:
        for name, _, _ in tqdm(selected, desc=f"svd {ckpt.path.name}", unit="matrix", disable=None):
            u, s, vh = svd_fp32(ckpt.read(name), device)
            out.write(f"{name}.S", s)
            if factors:
                out.write(f"{name}.U", u)
                out.write(f"{name}.Vh", vh)
    return Path(out_path)


# ---------------------------------------------------------------------------------------------
# Diagnostics of one matrix pair


def principal_angles(a: torch.Tensor, b: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Principal angles, in degrees and ascending, between the column spaces of `a` and `b`.

    Both must have orthonormal columns (e.g. `U` or `Vh.T` of an SVD); with `k`, only their first
    k columns are used. θ = arccos(clamp(svdvals(aᵀb), −1, 1)) as in docs/study.md §7, computed in the inputs'
    precision (at least fp32). Through arccos, fp32 SVD factors cannot resolve angles below a few
    hundredths of a degree: identical 1024×1024 matrices read 0.02° on average, 0.06° at most.
    Returns min(cols(a), cols(b)) angles, on the inputs' device.
    """
    if k is not None:
        a, b = a[:, :k], b[:, :k]
    assert a.shape[0] == b.shape[0], f"subspaces of different ambient dimension: {a.shape} vs {b.shape}"
    return _angles(_cross(a, b))


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return a.to(dtype).T @ b.to(dtype)


def _angles(cross: torch.Tensor) -> torch.Tensor:
    """Principal angles (degrees, ascending) from the cross product aᵀb of two orthonormal bases."""
    cosines = torch.linalg.svdvals(cross)  # descending ⇒ angles ascending
    return torch.rad2deg(torch.arccos(cosines.clamp(-1.0, 1.0)))


def resolve_k(n: int, k_frac: float = 0.2, k: int | None = None) -> int:
    """Subspace size for the principal angles: absolute `k` if given, else round(k_frac · n)
    (half up), at least 1 and at most n."""
    if k is None:
        if not 0.0 < k_frac <= 1.0:
            raise ValueError(f"k_frac must be in (0, 1], got {k_frac}")
        k = math.floor(k_frac * n + 0.5)
    elif k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return max(1, min(int(k), n))


def band_bounds(n: int, band: float = 0.1) -> dict[str, tuple[int, int]]:
    """Index ranges `[start, stop)` of the head (top p), bulk and tail (bottom p) of n singular
    values sorted descending, p = round(band · n) (half up), at least 1 when band > 0 and at
    most n // 2. The three bands partition 0..n−1; band = 0 makes everything bulk."""
    if not 0.0 <= band <= 0.5:
        raise ValueError(f"band must be in [0, 0.5], got {band}")
    p = 0 if band == 0 else min(max(1, math.floor(band * n + 0.5)), n // 2)
    return {"head": (0, p), "bulk": (p, n - p), "tail": (n - p, n)}


def _band_mean_angle(qa: torch.Tensor, qb: torch.Tensor, start: int, stop: int) -> float:
    """Mean principal angle between span(qa[:, start:stop]) and span(qb[:, start:stop])."""
    d = stop - start
    if d == 0:
        return math.nan
    rows, n = qa.shape
    if rows == n and n - d < d:
        # For two d-dimensional subspaces of R^n the nonzero principal angles equal those of their
        # orthogonal complements, here the other bands' columns. The complement is the smaller
        # problem (the bulk band), and the remaining d − (n − d) angles are zero.
        if d == n:
            return 0.0
        comp_a = torch.cat([qa[:, :start], qa[:, stop:]], dim=1)
        comp_b = torch.cat([qb[:, :start], qb[:, stop:]], dim=1)
        return principal_angles(comp_a, comp_b).sum().item() / d
    return principal_angles(qa[:, start:stop], qb[:, start:stop]).mean().item()


@dataclass
class MatrixDiagnostics:
    """docs/study.md §7's diagnostics for one matrix, reference a → compared b (tensors on the CPU)."""

    rows: int
    cols: int
    k: int
    sigma_a: torch.Tensor  # (n,) descending
    sigma_b: torch.Tensor  # (n,)
    angles_u: torch.Tensor  # (k,) degrees ascending: principal angles of the top-k left subspaces
    angles_v: torch.Tensor  # (k,) same for the right singular subspaces
    alignment_u: float  # mean_i max_j |U_a[:, :k]ᵀ U_b[:, :k]|_ij
    alignment_v: float
    energy_diag: float  # ‖diag(U_aᵀ ΔW V_a)‖² / ‖ΔW‖², 0 when ΔW = 0
    energy_rot: float  # 1 − energy_diag, 0 when ΔW = 0
    delta_zero: bool  # ΔW = W_b − W_a is exactly zero
    rel_delta_norm: float  # ‖ΔW‖_F / ‖W_a‖_F
    bands: dict[str, dict]  # band → start, stop, n, mean_rel_dsigma, mean_angle_u, mean_angle_v

    @property
    def rel_dsigma(self) -> torch.Tensor:
        return relative_change(self.sigma_a, self.sigma_b)


def relative_change(sigma_a: torch.Tensor, sigma_b: torch.Tensor) -> torch.Tensor:
    """(σ_b − σ_a)/σ_a by index; NaN where σ_a = 0."""
    return (sigma_b - sigma_a) / sigma_a.where(sigma_a != 0, torch.nan)


def matrix_diagnostics(
    w_a: torch.Tensor,
    w_b: torch.Tensor,
    *,
    k_frac: float = 0.2,
    k: int | None = None,
    band: float = 0.1,
    svd_a=None,
    svd_b=None,
    device: str | torch.device | None = None,
) -> MatrixDiagnostics:
    """Compare one matrix of two models (docs/study.md §7), from the weights and optionally their SVDs.

    - σ by index, relative change (σ_b − σ_a)/σ_a, and its mean absolute value per band.
    - Principal angles between the top-k left (U) and top-k right (V) singular subspaces
      (`resolve_k`); `angles_u[i]` is the i-th smallest angle, not the angle of singular vector i.
    - Per-vector alignment mean_i max_j |U_aᵀU_b|_ij over the top-k vectors.
    - Energy split of ΔW = W_b − W_a in a's singular basis: diagonal part
      ‖diag(U_aᵀ ΔW V_a)‖²/‖ΔW‖² (magnitude change), rotation part = 1 − diagonal part (everything
      else, including for a non-square matrix what lies outside a's singular subspaces). When ΔW is
      exactly zero both are defined as 0 and `delta_zero` is set.
    - Bands (`band_bounds`): for head, bulk and tail, the mean |Δσ|/σ_a over the band's indices
      and the mean of the principal angles between span(U_a[:, band]) and span(U_b[:, band])
      (likewise V): the subspaces spanned by the individual singular vectors of that band in each
      model, all of them, not only the top k.
    """
    device = device or w_a.device
    u_a, s_a, vh_a = svd_fp32(w_a, device) if svd_a is None else (t.to(device, torch.float32) for t in svd_a)
    u_b, s_b, vh_b = svd_fp32(w_b, device) if svd_b is None else (t.to(device, torch.float32) for t in svd_b)
    rows, cols = w_a.shape
    n = min(rows, cols)
    assert w_b.shape == w_a.shape, f"shapes differ: {tuple(w_a.shape)} vs {tuple(w_b.shape)}"
    assert u_a.shape == u_b.shape == (rows, n) and vh_a.shape == vh_b.shape == (n, cols)
    kk = resolve_k(n, k_frac, k)
    v_a, v_b = vh_a.T, vh_b.T

    delta = w_b.to(device, torch.float32) - w_a.to(device, torch.float32)
    delta_sq = delta.square().sum().item()
    if delta_sq == 0.0:
        energy_diag = energy_rot = 0.0
    else:
        diag = (u_a.T @ delta).mul_(vh_a).sum(dim=1)  # u_iᵀ ΔW v_i
        energy_diag = diag.square().sum().item() / delta_sq
        energy_rot = 1.0 - energy_diag
    rel_delta_norm = math.sqrt(delta_sq) / max(torch.linalg.vector_norm(w_a.float()).item(), 1e-30)
    del delta

    rel = relative_change(s_a, s_b).abs()
    bands = {}
    for label, (start, stop) in band_bounds(n, band).items():
        part = rel[start:stop]
        part = part[~part.isnan()]
        bands[label] = {
            "start": start,
            "stop": stop,
            "n": stop - start,
            "mean_rel_dsigma": part.mean().item() if len(part) else math.nan,
            "mean_angle_u": _band_mean_angle(u_a, u_b, start, stop),
            "mean_angle_v": _band_mean_angle(v_a, v_b, start, stop),
        }

    cross_u, cross_v = _cross(u_a[:, :kk], u_b[:, :kk]), _cross(v_a[:, :kk], v_b[:, :kk])
    return MatrixDiagnostics(
        rows=rows,
        cols=cols,
        k=kk,
        sigma_a=s_a.cpu(),
        sigma_b=s_b.cpu(),
        angles_u=_angles(cross_u).cpu(),
        angles_v=_angles(cross_v).cpu(),
        alignment_u=cross_u.abs().amax(dim=1).mean().item(),
        alignment_v=cross_v.abs().amax(dim=1).mean().item(),
        energy_diag=energy_diag,
        energy_rot=energy_rot,
        delta_zero=delta_sq == 0.0,
        rel_delta_norm=rel_delta_norm,
        bands=bands,
    )


# ---------------------------------------------------------------------------------------------
# Comparing two checkpoints


class _Source:
    """A checkpoint directory, or an SVD file with factors (which then stands in for the weights)."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        self.ckpt, self.svd = None, None
        if path.is_dir():
            self.ckpt = Checkpoint(path)
        elif path.is_file():
            svd = SvdFile(path)
            if not all(svd.has_factors(name) for name in svd.names):
                raise CheckpointError(
                    f"{path}: an SVD file without factors (singular values only); compare the checkpoint directory"
                )
            self.svd = svd
        else:
            raise CheckpointError(f"{path}: neither a checkpoint directory nor an SVD file")
        self.path = path
        self.names = self.ckpt.names if self.ckpt else self.svd.names
        self.shapes = self.ckpt.shapes if self.ckpt else {name: self.svd.shape(name) for name in self.names}

    def matrix(self, name: str, device: torch.device):
        """(W, (U, S, Vh)) in fp32 on `device`."""
        if self.ckpt is not None:
            w = self.ckpt.read(name).to(device, torch.float32)
            return w, svd_fp32(w)
        u, s, vh = (t.to(device, torch.float32) for t in self.svd.factors(name))
        return (u * s) @ vh, (u, s, vh)


def compare(
    a: str | os.PathLike,
    b: str | os.PathLike,
    types: str | Iterable[str] = MATRIX_TYPES,
    *,
    k_frac: float = 0.2,
    k: int | None = None,
    band: float = 0.1,
    device: str | torch.device | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Spectral comparison of checkpoint a (reference) and b, matrix by matrix (`matrix_diagnostics`).

    `a` and `b` are checkpoint directories or SVD files from `svd_checkpoint`. With factors the file
    is used as is (W = U diag(S) Vh); without, its source checkpoint is decomposed again (the
    paper-scale mode, where factors do not fit on disk). Matrices are selected from a by `types`;
    each must exist in b with the same shape, else `CheckpointError`.

    Returns `(summary, per_index)`, both in `select_matrices` order:
    - summary: one row per matrix × band (head, bulk, tail): matrix, layer, type, rows, cols, k,
      band, n (band size), mean_rel_dsigma, mean_angle_u, mean_angle_v (per band), then per-matrix
      columns repeated on each band row: matrix_mean_rel_dsigma (all indices), topk_mean_angle_u,
      topk_mean_angle_v (mean of the top-k principal angles), alignment_u, alignment_v,
      energy_diag, energy_rot, delta_zero, rel_delta_norm.
    - per_index: one row per matrix × singular index: matrix, layer, type, index, band, sigma_a,
      sigma_b, rel_dsigma, angle_u, angle_v (the index-th smallest principal angle of the top-k
      subspaces; null for index ≥ k). Undefined values (σ_a = 0, empty bands) are null.
    """
    types = parse_types(types)
    device = resolve_device(device)
    src_a, src_b = _Source(a), _Source(b)
    selected = select_matrices(src_a.names, types, src_a.shapes)
    if not selected:
        raise CheckpointError(f"{src_a.path}: no matrices of types {types}")
    for name, _, _ in selected:
        if name not in src_b.shapes:
            raise CheckpointError(f"{src_b.path}: no tensor named {name} (present in {src_a.path})")
        if tuple(src_b.shapes[name]) != tuple(src_a.shapes[name]):
            shape_a, shape_b = tuple(src_a.shapes[name]), tuple(src_b.shapes[name])
            raise CheckpointError(f"{name}: shape {shape_a} in {src_a.path} but {shape_b} in {src_b.path}")

    summary_rows, index_frames = [], []
    for name, layer, mtype in tqdm(selected, desc="spectrum", unit="matrix", disable=None):
        w_a, svd_a = src_a.matrix(name, device)
        w_b, svd_b = src_b.matrix(name, device)
        d = matrix_diagnostics(w_a, w_b, k_frac=k_frac, k=k, band=band, svd_a=svd_a, svd_b=svd_b)
        del w_a, w_b, svd_a, svd_b
        rel = d.rel_dsigma
        per_matrix = {
            "matrix_mean_rel_dsigma": rel[~rel.isnan()].abs().mean().item(),
            "topk_mean_angle_u": d.angles_u.mean().item(),
            "topk_mean_angle_v": d.angles_v.mean().item(),
            "alignment_u": d.alignment_u,
            "alignment_v": d.alignment_v,
            "energy_diag": d.energy_diag,
            "energy_rot": d.energy_rot,
            "delta_zero": d.delta_zero,
            "rel_delta_norm": d.rel_delta_norm,
        }
        for label in BANDS:
            stats = d.bands[label]
            summary_rows.append(
                {
                    "matrix": name,
                    "layer": layer,
                    "type": mtype,
                    "rows": d.rows,
                    "cols": d.cols,
                    "k": d.k,
                    "band": label,
                    "n": stats["n"],
                    "mean_rel_dsigma": stats["mean_rel_dsigma"],
                    "mean_angle_u": stats["mean_angle_u"],
                    "mean_angle_v": stats["mean_angle_v"],
                    **per_matrix,
                }
            )
        n = len(d.sigma_a)
        band_label = np.empty(n, dtype=object)
        for label, stats in d.bands.items():
            band_label[stats["start"] : stats["stop"]] = label
        pad = np.full(n - d.k, np.nan)
        index_frames.append(
            pl.DataFrame(
                {
                    "matrix": [name] * n,
                    "layer": [layer] * n,
                    "type": [mtype] * n,
                    "index": np.arange(n, dtype=np.int32),
                    "band": band_label.tolist(),
                    "sigma_a": d.sigma_a.double().numpy(),
                    "sigma_b": d.sigma_b.double().numpy(),
                    "rel_dsigma": rel.double().numpy(),
                    "angle_u": np.concatenate([d.angles_u.numpy(), pad]),
                    "angle_v": np.concatenate([d.angles_v.numpy(), pad]),
                },
                schema_overrides={"layer": pl.Int32, "type": pl.String},
            )
        )

    summary = pl.DataFrame(summary_rows, schema_overrides={"layer": pl.Int32, "type": pl.String})
    summary = summary.with_columns(pl.col(pl.Float64).fill_nan(None))
    per_index = pl.concat(index_frames).with_columns(pl.col(pl.Float64).fill_nan(None))
    return summary, per_index


def index_path(out: str | os.PathLike) -> Path:
    """Where `write_spectrum` puts the per-index table: `<a>--<b>.parquet` → `<a>--<b>.index.parquet`."""
    out = Path(out)
    if out.suffix != ".parquet":
        raise ValueError(f"spectrum output must end in .parquet, got {out}")
    return out.with_suffix(".index.parquet")


def write_spectrum(
    summary: pl.DataFrame, per_index: pl.DataFrame, out: str | os.PathLike, index: str | os.PathLike | None = None
) -> tuple[Path, Path]:
    """Write the summary to `out` and the per-index table to `index` (default `index_path(out)`),
    each atomically; the summary last, so its presence means both are complete."""
    out = Path(out)
    index = Path(index) if index is not None else index_path(out)
    write_parquet(per_index, index)
    write_parquet(summary, out)
    return index, out
