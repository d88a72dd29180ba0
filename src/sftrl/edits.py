"""Restoration edits (docs/study.md §8): move singular directions, values or whole layers from a donor
checkpoint into a target checkpoint.

Notation as in docs/study.md §8: W = U diag(S) Vᵀ with S descending, n = min(rows, cols). `top` and `bottom` are
fractions of n, turned into counts kt = round(top · n), kb = round(bottom · n) (half up), then
clipped as the study's code does: kt = min(kt, n), kb = min(kb, n − kt). The head is indices
[0, kt), the tail [n − kb, n).

- `uv_merge` (docs/study.md §8, "restored-direction", P1's UV merging): donor U and V in the head and tail,
  the target's singular values everywhere.
- `sigma_swap` (docs/study.md §8): donor singular values in the head and tail, the target's U and V.
- `triplet_swap` (docs/study.md §8, "restored-vector"): donor U, S and V in the head and tail.
- `layer_reset` (docs/study.md §8): the donor's tensors for chosen decoder layers (plus embeddings and LM head).

Matrices are computed in fp32 and returned or written in the target's dtype. The reverse
experiment of docs/study.md §8 (the SFT model's directions imposed on its PPO model) is the same call with the
roles swapped: `edit_checkpoint(target_dir=ppo, donor_dir=sft, ...)`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from sftrl.checkpoints import DEFAULT_MAX_SHARD_BYTES, Checkpoint, CheckpointError, ShardWriter
from sftrl.spectrum import SvdFile, format_types, layer_of, parse_types, resolve_device, select_matrices
from sftrl.study import format_layers

METHODS = ("uv-merge", "sigma-swap", "triplet-swap")
Factors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def band_counts(n: int, top: float, bottom: float = 0.0) -> tuple[int, int]:
    """(kt, kb): fractions of n rounded half up, kt ≤ n and kb ≤ n − kt (the study's clipping)."""
    for label, frac in (("top", top), ("bottom", bottom)):
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"{label} must be a fraction in [0, 1], got {frac}")
    kt = min(math.floor(top * n + 0.5), n)
    kb = min(math.floor(bottom * n + 0.5), n - kt)
    return kt, kb


def _factors(w: torch.Tensor | None, svd: Factors | None, device, copy: bool = True) -> Factors:
    """fp32 SVD factors of `w` on `device`, or the precomputed `svd` (copied, so the caller may
    modify them in place, unless `copy=False`)."""
    if svd is not None:
        return tuple(t.to(device, torch.float32, copy=copy) for t in svd)
    return torch.linalg.svd(w.to(device, torch.float32), full_matrices=False)


def _ends(x: torch.Tensor, kt: int, kb: int, dim: int) -> torch.Tensor:
    """The head [0, kt) and tail [n − kb, n) of `x` along `dim`, as one compact copy of kt + kb slices."""
    n = x.shape[dim]
    return torch.cat([x.narrow(dim, 0, kt), x.narrow(dim, n - kb, kb)], dim)


def _splice(base: torch.Tensor, ends: torch.Tensor, kt: int, kb: int, dim: int) -> None:
    """Overwrite the head and tail of `base` along `dim` with `ends` (from `_ends`), in place."""
    n = base.shape[dim]
    base.narrow(dim, 0, kt).copy_(ends.narrow(dim, 0, kt))
    base.narrow(dim, n - kb, kb).copy_(ends.narrow(dim, kt, kb))


def _band_counts_for(w_target, w_donor, svd_donor, top: float, bottom: float) -> tuple[int, int, int]:
    """(n, kt, kb) for a target/donor pair, after checking that their shapes agree."""
    assert w_target.ndim == 2, f"expected a matrix, got shape {tuple(w_target.shape)}"
    if w_donor is None and svd_donor is None:
        raise ValueError("give the donor matrix or its SVD")
    donor_shape = w_donor.shape if w_donor is not None else (svd_donor[0].shape[0], svd_donor[2].shape[1])
    if tuple(donor_shape) != tuple(w_target.shape):
        raise ValueError(f"donor shape {tuple(donor_shape)} differs from target shape {tuple(w_target.shape)}")
    n = min(w_target.shape)
    return (n, *band_counts(n, top, bottom))


def _uv_merge(w_target, w_donor, svd_target, svd_donor, n, kt, kb, device):
    u_d, _, vh_d = _factors(w_donor, svd_donor, device, copy=False)
    u_d, vh_d = _ends(u_d, kt, kb, 1), _ends(vh_d, kt, kb, 0)  # drop the rest before the next SVD
    u, s, vh = _factors(w_target, svd_target, device)
    _splice(u, u_d, kt, kb, dim=1)
    _splice(vh, vh_d, kt, kb, dim=0)
    return u.mul_(s) @ vh


def _sigma_swap(w_target, w_donor, svd_target, svd_donor, n, kt, kb, device):
    if svd_donor is not None:
        s_d = svd_donor[1].to(device, torch.float32)
    else:
        s_d = torch.linalg.svdvals(w_donor.to(device, torch.float32))
    u, s, vh = _factors(w_target, svd_target, device)
    _splice(s, _ends(s_d, kt, kb, 0), kt, kb, dim=0)
    return u.mul_(s) @ vh


def _triplet_swap(w_target, w_donor, svd_target, svd_donor, n, kt, kb, device):
    if kt + kb == n:  # the whole spectrum: the donor matrix itself
        if w_donor is None:
            u_d, s_d, vh_d = _factors(None, svd_donor, device)
            w_donor = u_d.mul_(s_d) @ vh_d
        return w_donor
    u_d, s_d, vh_d = _factors(w_donor, svd_donor, device, copy=False)
    u_d, s_d, vh_d = _ends(u_d, kt, kb, 1), _ends(s_d, kt, kb, 0), _ends(vh_d, kt, kb, 0)
    u, s, vh = _factors(w_target, svd_target, device)
    _splice(u, u_d, kt, kb, dim=1)
    _splice(s, s_d, kt, kb, dim=0)
    _splice(vh, vh_d, kt, kb, dim=0)
    return u.mul_(s) @ vh


_EDITS = {"uv-merge": _uv_merge, "sigma-swap": _sigma_swap, "triplet-swap": _triplet_swap}


def spectral_edit(
    method: str,
    w_target: torch.Tensor,
    w_donor: torch.Tensor | None,
    top: float,
    bottom: float = 0.0,
    *,
    svd_target: Factors | None = None,
    svd_donor: Factors | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """One matrix edited by ``method`` (docs/study.md §8), with kt = round(top·n) directions
    from the top of the spectrum and kb = round(bottom·n) from the bottom (``band_counts``):

    * ``uv-merge``: W = U_new diag(S_target) V_newᵀ, where U_new, V_new take the donor's singular
      vectors in the head and tail and the target's elsewhere. No shortcut when kt + kb = n:
      top=1 gives U_donor diag(S_target) V_donorᵀ, the donor's directions with the target's
      magnitudes. U_new is in general not exactly orthonormal (the study does not
      re-orthogonalise).
    * ``sigma-swap``: W = U_target diag(S_new) V_targetᵀ with the donor's singular values in the
      head and tail (the magnitude-only control); of the donor only the singular values are used.
    * ``triplet-swap``: the donor's U, S and V in the head and tail; kt + kb = n returns the donor
      matrix itself (a plain copy), as in the study.

    kt = kb = 0 returns ``w_target`` itself. ``svd_target``/``svd_donor`` are optional
    precomputed (U, S, Vh); ``w_donor`` may then be None. The result has the target's dtype and
    device.
    """
    if method not in _EDITS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    n, kt, kb = _band_counts_for(w_target, w_donor, svd_donor, top, bottom)
    if kt == kb == 0:
        return w_target
    w = _EDITS[method](w_target, w_donor, svd_target, svd_donor, n, kt, kb, device or w_target.device)
    return w.to(w_target.device, w_target.dtype)


uv_merge = partial(spectral_edit, "uv-merge")
sigma_swap = partial(spectral_edit, "sigma-swap")
triplet_swap = partial(spectral_edit, "triplet-swap")


@dataclass
class EditReport:
    """What an edit wrote: `from_donor` are the tensors edited (or, for a layer reset, copied from
    the donor); `from_target` are copied unchanged from the target."""

    method: str
    out_dir: Path
    from_donor: list[str]
    from_target: list[str]
    params: dict = field(default_factory=dict)

    def summary(self) -> str:
        params = " ".join(f"{k}={v}" for k, v in self.params.items())
        n = len(self.from_donor) + len(self.from_target)
        return f"{self.method} {params}: {len(self.from_donor)} of {n} tensors from the donor -> {self.out_dir}"


def _open_pair(target_dir, donor_dir) -> tuple[Checkpoint, Checkpoint]:
    """Both checkpoints, checked to hold the same tensor names with the same shapes."""
    target, donor = Checkpoint(target_dir), Checkpoint(donor_dir)
    only_target = sorted(set(target.names) - set(donor.names))
    only_donor = sorted(set(donor.names) - set(target.names))
    if only_target or only_donor:
        parts = [f"{len(only_target)} only in the target (e.g. {only_target[0]})"] if only_target else []
        parts += [f"{len(only_donor)} only in the donor (e.g. {only_donor[0]})"] if only_donor else []
        raise CheckpointError(f"{target.path} and {donor.path} hold different tensors: {'; '.join(parts)}")
    mismatched = [name for name in target.names if target.shape(name) != donor.shape(name)]
    if mismatched:
        name = mismatched[0]
        raise CheckpointError(
            f"{target.path} and {donor.path}: {len(mismatched)} tensor(s) differ in shape, "
            f"e.g. {name}: {target.shape(name)} vs {donor.shape(name)}"
        )
    return target, donor


def _svd_from_file(svd_file: SvdFile | None, name: str, shape) -> Factors | None:
    if svd_file is None or name not in svd_file.names or not svd_file.has_factors(name):
        return None
    if svd_file.shape(name) != tuple(shape):
        raise CheckpointError(f"{svd_file.path}: {name} has shape {svd_file.shape(name)}, expected {tuple(shape)}")
    return svd_file.factors(name)


def edit_checkpoint(
    target_dir: str | os.PathLike,
    donor_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    method: str,
    top: float,
    bottom: float = 0.0,
    types: str | Iterable[str] = "all",
    *,
    svd_target: str | os.PathLike | None = None,
    svd_donor: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> EditReport:
    """Apply `method` (one of `METHODS`) to every selected matrix and write a complete checkpoint.

    The two checkpoints must hold the same tensor names and shapes (else `CheckpointError`).
    Edited: every floating-point 2-D tensor when `types="all"` (as the study did: embeddings, LM
    head and all projections), else the projections of the given `MATRIX_TYPES`. Everything else
    (1-D tensors, unselected matrices) is copied from the target, as are config, generation config
    and tokenizer. Tensors keep the target's dtype. `svd_target`/`svd_donor` are SVD files from
    `spectrum.svd_checkpoint`; matrices with factors there are not decomposed again.
    Streams one tensor of each model at a time; the output directory appears atomically.
    """
    if method not in _EDITS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    edit = partial(spectral_edit, method)
    band_counts(1, top, bottom)  # validate the fractions before any work
    types = parse_types(types)
    device = resolve_device(device)
    target, donor = _open_pair(target_dir, donor_dir)
    svd_t = SvdFile(svd_target) if svd_target is not None else None
    svd_d = SvdFile(svd_donor) if svd_donor is not None else None

    selected = select_matrices(target.names, types, target.shapes)
    edited = [name for name, _, _ in selected if target.torch_dtype(name).is_floating_point]
    if not edited:
        raise CheckpointError(f"{target.path}: no matrices of types {types} to edit")

    def edited_tensor(name: str) -> torch.Tensor:
        shape = target.shape(name)
        w_target = target.read(name)
        donor_svd = _svd_from_file(svd_d, name, shape)
        w_donor = donor.read(name) if donor_svd is None else None
        svd_target = _svd_from_file(svd_t, name, shape)
        w = edit(w_target, w_donor, top, bottom, svd_target=svd_target, svd_donor=donor_svd, device=device)
        assert w.shape == w_target.shape and w.dtype == w_target.dtype, name
        return w

    kept = _write_edited(target, out_dir, edited, edited_tensor, method, max_shard_bytes)
    return EditReport(method, Path(out_dir), edited, kept, {"top": top, "bottom": bottom, "types": format_types(types)})


def _write_edited(
    target: Checkpoint, out_dir, changed: list[str], tensor, label: str, max_shard_bytes: int
) -> list[str]:
    """Write ``target`` to ``out_dir`` (atomically, sharded like the target), with ``tensor(name)``
    for each name in ``changed`` and the target's own tensor for the rest; returns the rest."""
    changed_set = set(changed)
    kept = [name for name in target.names if name not in changed_set]
    assert len(changed) + len(kept) == len(target.names)
    with ShardWriter(out_dir, copy_from=target.path, max_shard_bytes=max_shard_bytes) as out:
        for name in tqdm(target.names, desc=f"{label} -> {Path(out_dir).name}", unit="tensor", disable=None):
            w = tensor(name) if name in changed_set else target.read(name)
            out.write(name, w)
            del w
        assert out.names == target.names
    return kept


def is_embedding_or_head(name: str) -> bool:
    """The language model's token embedding or LM head (a tied model stores only the embedding)."""
    return name.endswith("embed_tokens.weight") or name.endswith("lm_head.weight")


def layer_reset(
    target_dir: str | os.PathLike,
    donor_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    layers: Iterable[int],
    embeddings: bool = True,
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> EditReport:
    """docs/study.md §8: the donor's tensors for the given decoder layers, everything else from the target.

    A tensor comes from the donor when its name is under `…layers.<i>.` of the language model
    (`spectrum.LAYER_RE`; the vision tower is never touched) with i in `layers`, or, with
    `embeddings`, when it is the token embedding or LM head (`is_embedding_or_head`), which the
    study always replaced. Plain copies in the target's dtype: the study's k_top=4096 SVD
    replacement degenerates to exactly this for every matrix. One difference from the study's
    code, which edited 2-D tensors only: a reset layer is reset whole, its norms included.
    """
    layers = sorted(set(int(i) for i in layers))
    target, donor = _open_pair(target_dir, donor_dir)
    present = {layer_of(name) for name in target.names} - {None}
    absent = [i for i in layers if i not in present]
    if absent:
        raise CheckpointError(
            f"{target.path}: no decoder layer(s) {absent} (it has layers 0-{max(present, default=-1)})"
        )
    if not layers and not embeddings:
        raise ValueError("nothing to reset: no layers and no embeddings")
    chosen = set(layers)
    from_donor = [
        name for name in target.names if layer_of(name) in chosen or (embeddings and is_embedding_or_head(name))
    ]
    if embeddings and not any(is_embedding_or_head(name) for name in from_donor):
        raise CheckpointError(f"{target.path}: no embed_tokens or lm_head tensor to reset (use embeddings=False)")

    def copied(name: str) -> torch.Tensor:
        w = donor.read(name).to(target.torch_dtype(name))
        assert tuple(w.shape) == target.shape(name), name
        return w

    from_target = _write_edited(target, out_dir, from_donor, copied, "layer-reset", max_shard_bytes)
    return EditReport(
        "layer-reset",
        Path(out_dir),
        from_donor,
        from_target,
        {"layers": format_layers(layers), "embeddings": embeddings},
    )


def parse_layers(spec: str) -> list[int]:
    """ "0-3" → [0, 1, 2, 3]; "0-3,8,10-11" → [0, 1, 2, 3, 8, 10, 11]."""
    layers: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            lo_i, hi_i = int(lo), int(hi) if hi else int(lo)
            if lo_i < 0 or hi_i < lo_i:
                raise ValueError
            layers.update(range(lo_i, hi_i + 1))
    except ValueError:
        raise ValueError(f"layers must look like '0-3' or '0-3,8', got {spec!r}") from None
    return sorted(layers)
