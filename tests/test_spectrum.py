"""Spectral diagnostics (docs/study.md §7): matrix selection, principal angles, per-matrix metrics, and
streaming comparison of checkpoints and SVD files."""

import math

import polars as pl
import pytest
import torch

from sftrl.checkpoints import CheckpointError, ShardWriter
from sftrl.spectrum import (
    MATRIX_TYPES,
    SvdFile,
    _band_mean_angle,
    band_bounds,
    compare,
    index_path,
    matrix_diagnostics,
    parse_types,
    principal_angles,
    resolve_k,
    select_matrices,
    svd_checkpoint,
    write_spectrum,
)


def orthonormal(rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=torch.float64))[0]


# ---------------------------------------------------------------------------------------------
# Principal angles


def test_principal_angles_identical_subspaces_are_zero():
    q = orthonormal(20, 5, 0)
    mixed = q @ orthonormal(5, 5, 1)  # another basis of the same subspace
    torch.testing.assert_close(principal_angles(q, mixed), torch.zeros(5, dtype=torch.float64), atol=1e-5, rtol=0)


def test_principal_angles_orthogonal_subspaces_are_ninety():
    eye = torch.eye(6, dtype=torch.float64)
    torch.testing.assert_close(principal_angles(eye[:, :3], eye[:, 3:]), torch.full((3,), 90.0, dtype=torch.float64))


@pytest.mark.parametrize("theta", [1.0, 17.0, 45.0, 89.0])
def test_principal_angles_of_a_known_rotation(theta):
    # span(e0, e1) vs span(cos θ e0 + sin θ e2, e1): angles 0 and θ; rotated into a random basis.
    t = math.radians(theta)
    a = torch.zeros(8, 2, dtype=torch.float64)
    a[0, 0] = a[1, 1] = 1.0
    b = torch.zeros(8, 2, dtype=torch.float64)
    b[0, 0], b[2, 0], b[1, 1] = math.cos(t), math.sin(t), 1.0
    r = orthonormal(8, 8, 3)
    angles = principal_angles(r @ a, r @ b)
    torch.testing.assert_close(angles, torch.tensor([0.0, theta], dtype=torch.float64), atol=1e-5, rtol=0)
    # k selects leading columns: only the unrotated e1 vs the rotated first column.
    torch.testing.assert_close(
        principal_angles(r @ a[:, [1, 0]], r @ b[:, [1, 0]], k=1),
        torch.tensor([0.0], dtype=torch.float64),
        atol=1e-5,
        rtol=0,
    )


def test_principal_angles_ascending():
    angles = principal_angles(orthonormal(30, 6, 4), orthonormal(30, 6, 5))
    assert torch.all(angles[1:] >= angles[:-1]) and angles.dtype == torch.float64


def test_band_mean_angle_complement_shortcut_equals_direct_computation():
    qa, qb = orthonormal(12, 12, 6), orthonormal(12, 12, 7)
    for start, stop in [(1, 11), (2, 9), (0, 12), (0, 2), (10, 12)]:
        direct = principal_angles(qa[:, start:stop], qb[:, start:stop]).mean().item()
        assert _band_mean_angle(qa, qb, start, stop) == pytest.approx(direct, abs=1e-6)
    assert math.isnan(_band_mean_angle(qa, qb, 3, 3))


# ---------------------------------------------------------------------------------------------
# Selection and bookkeeping


def test_select_matrices_by_type_and_all():
    names = [
        "model.layers.10.self_attn.q_proj.weight",
        "model.layers.2.mlp.down_proj.weight",
        "model.layers.2.self_attn.q_proj.weight",
        "model.layers.2.self_attn.q_proj.bias",
        "model.layers.2.input_layernorm.weight",
        "model.embed_tokens.weight",
        "language_model.model.layers.3.self_attn.k_proj.weight",  # Mllama on disk
        "language_model.model.layers.3.cross_attn.k_proj.weight",  # cross-attention: excluded
        "vision_model.transformer.layers.0.self_attn.q_proj.weight",  # vision tower: excluded
    ]
    assert select_matrices(names, ["q", "k", "down"]) == [
        ("model.layers.2.self_attn.q_proj.weight", 2, "q"),
        ("model.layers.2.mlp.down_proj.weight", 2, "down"),
        ("language_model.model.layers.3.self_attn.k_proj.weight", 3, "k"),
        ("model.layers.10.self_attn.q_proj.weight", 10, "q"),
    ]
    assert select_matrices(names, "q") == [
        ("model.layers.2.self_attn.q_proj.weight", 2, "q"),
        ("model.layers.10.self_attn.q_proj.weight", 10, "q"),
    ]
    shapes = {n: (4,) if n.endswith(("bias", "layernorm.weight")) else (4, 4) for n in names}
    # "all": every 2-D tensor; matrices outside the decoder layers' projections have no type,
    # tensors outside the language model's decoder layers no layer; those come last.
    assert select_matrices(names, "all", shapes) == [
        ("model.layers.2.self_attn.q_proj.weight", 2, "q"),
        ("model.layers.2.mlp.down_proj.weight", 2, "down"),
        ("language_model.model.layers.3.self_attn.k_proj.weight", 3, "k"),
        ("language_model.model.layers.3.cross_attn.k_proj.weight", 3, None),
        ("model.layers.10.self_attn.q_proj.weight", 10, "q"),
        ("model.embed_tokens.weight", None, None),
        ("vision_model.transformer.layers.0.self_attn.q_proj.weight", None, None),
    ]
    with pytest.raises(ValueError, match="shapes"):
        select_matrices(names, "all")


def test_parse_types():
    assert parse_types("all") == "all"
    assert parse_types("q, k,down") == ("q", "k", "down")
    assert parse_types(MATRIX_TYPES) == MATRIX_TYPES
    with pytest.raises(ValueError, match="matrix types"):
        parse_types("q,attn")


def test_band_bounds_and_k():
    assert band_bounds(10, 0.1) == {"head": (0, 1), "bulk": (1, 9), "tail": (9, 10)}
    assert band_bounds(4, 0.1) == {"head": (0, 1), "bulk": (1, 3), "tail": (3, 4)}  # at least one
    assert band_bounds(5, 0.5) == {"head": (0, 2), "bulk": (2, 3), "tail": (3, 5)}  # at most n // 2
    assert band_bounds(6, 0.0) == {"head": (0, 0), "bulk": (0, 6), "tail": (6, 6)}
    assert resolve_k(4096, 0.1875) == 768
    assert resolve_k(10, k=50) == 10 and resolve_k(10, 0.01) == 1


# ---------------------------------------------------------------------------------------------
# One matrix pair


def test_identical_matrices_have_no_change():
    w = orthonormal(12, 8, 0).float() @ torch.diag(torch.linspace(5, 1, 8)) @ orthonormal(8, 8, 1).float().T
    d = matrix_diagnostics(w, w.clone(), k_frac=0.5)
    assert d.delta_zero and d.energy_diag == 0.0 and d.energy_rot == 0.0 and d.rel_delta_norm == 0.0
    assert d.k == 4 and d.angles_u.abs().max() < 0.1 and d.alignment_u == pytest.approx(1.0, abs=1e-5)
    assert all(b["mean_rel_dsigma"] == 0.0 for b in d.bands.values())


def test_pure_rescaling_is_all_diagonal_energy():
    u, v = orthonormal(12, 8, 0), orthonormal(8, 8, 1)
    s = torch.linspace(5, 1, 8, dtype=torch.float64)
    w_a = (u * s) @ v.T
    w_b = (u * (s * 1.01)) @ v.T
    d = matrix_diagnostics(w_a.float(), w_b.float(), k=3)
    torch.testing.assert_close(d.rel_dsigma, torch.full((8,), 0.01), atol=1e-5, rtol=0)
    assert d.energy_diag == pytest.approx(1.0, abs=1e-4) and d.energy_rot == pytest.approx(0.0, abs=1e-4)
    assert d.angles_u.max() < 0.5 and d.angles_v.max() < 0.5


def test_energy_split_in_the_reference_basis():
    # ΔW = 3 u_0 v_0ᵀ + 4 u_1 v_2ᵀ in a's basis: diagonal energy 9 / (9 + 16).
    u, v = orthonormal(10, 6, 4), orthonormal(6, 6, 5)
    s = torch.linspace(6, 1, 6, dtype=torch.float64)
    w_a = (u * s) @ v.T
    delta = 3 * torch.outer(u[:, 0], v[:, 0]) + 4 * torch.outer(u[:, 1], v[:, 2])
    d = matrix_diagnostics(w_a.float(), (w_a + delta).float())
    assert d.energy_diag == pytest.approx(9 / 25, abs=1e-4)
    assert d.energy_rot == pytest.approx(16 / 25, abs=1e-4)
    assert d.rel_delta_norm == pytest.approx(5 / torch.linalg.norm(w_a).item(), rel=1e-4)


def test_rotating_one_left_singular_vector_by_theta():
    # Tall W: turn u_0 by θ toward a direction outside span(U); σ and V stay.
    theta = 30.0
    q = orthonormal(12, 9, 2)
    u, outside = q[:, :8], q[:, 8]
    v = orthonormal(8, 8, 3)
    s = torch.linspace(8, 1, 8, dtype=torch.float64)
    u_rot = u.clone()
    u_rot[:, 0] = math.cos(math.radians(theta)) * u[:, 0] + math.sin(math.radians(theta)) * outside
    d = matrix_diagnostics(((u * s) @ v.T).float(), ((u_rot * s) @ v.T).float(), k=1, band=0.125)
    assert d.angles_u.item() == pytest.approx(theta, abs=1e-3)
    assert d.angles_v.item() == pytest.approx(0.0, abs=0.05)
    assert d.rel_dsigma.abs().max() < 1e-5
    assert d.bands["head"]["mean_angle_u"] == pytest.approx(theta, abs=1e-3)
    assert d.bands["tail"]["mean_angle_u"] == pytest.approx(0.0, abs=0.05)
    assert d.energy_rot > 0.5  # a pure rotation: little of ΔW on the diagonal


# ---------------------------------------------------------------------------------------------
# Checkpoints and SVD files


def write_checkpoint(path, tensors, max_shard_bytes=10_000_000):
    with ShardWriter(path, max_shard_bytes=max_shard_bytes) as out:
        for name, tensor in tensors.items():
            out.write(name, tensor)
    (path / "config.json").write_text("{}")
    return path


def synthetic_tensors(seed, base=None, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "model.embed_tokens.weight": (30, 16),
        **{f"model.layers.{i}.self_attn.q_proj.weight": (16, 16) for i in range(2)},
        **{f"model.layers.{i}.mlp.up_proj.weight": (24, 16) for i in range(2)},
        **{f"model.layers.{i}.mlp.down_proj.weight": (16, 24) for i in range(2)},
        **{f"model.layers.{i}.input_layernorm.weight": (16,) for i in range(2)},
    }
    tensors = {name: torch.randn(*shape, generator=g) for name, shape in shapes.items()}
    if base is not None:
        tensors = {name: base[name] + noise * t for name, t in tensors.items()}
    return tensors


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("spectrum")
    a = synthetic_tensors(0)
    b = synthetic_tensors(1, base=a)
    return (
        write_checkpoint(root / "a", a, max_shard_bytes=3_000),  # sharded
        write_checkpoint(root / "b", b),
        a,
        b,
    )


def test_compare_on_checkpoints_equals_in_memory_diagnostics(pair):
    dir_a, dir_b, a, b = pair
    summary, per_index = compare(dir_a, dir_b, ["q", "up", "down"], k_frac=0.25, band=0.125)
    assert summary.height == 6 * 3 and per_index.height == 2 * 16 * 3
    assert summary["matrix"].unique(maintain_order=True).to_list() == [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    ]
    assert summary["band"].to_list()[:3] == ["head", "bulk", "tail"]
    name = "model.layers.1.mlp.down_proj.weight"
    d = matrix_diagnostics(a[name], b[name], k_frac=0.25, band=0.125)
    rows = summary.filter(pl.col("matrix") == name)
    assert rows["layer"].to_list() == [1, 1, 1] and rows["type"].to_list() == ["down"] * 3
    assert rows["k"][0] == d.k == 4 and rows["n"].to_list() == [2, 12, 2]
    for label, row in zip(("head", "bulk", "tail"), rows.iter_rows(named=True), strict=True):
        for col in ("mean_rel_dsigma", "mean_angle_u", "mean_angle_v"):
            assert row[col] == pytest.approx(d.bands[label][col], rel=1e-6)
        assert row["energy_diag"] == pytest.approx(d.energy_diag) and row["alignment_v"] == pytest.approx(d.alignment_v)
    index = per_index.filter(pl.col("matrix") == name)
    torch.testing.assert_close(torch.tensor(index["sigma_b"].to_numpy()), d.sigma_b.double())
    torch.testing.assert_close(torch.tensor(index["angle_u"].head(4).to_numpy()), d.angles_u.double())
    assert index["angle_u"].tail(12).null_count() == 12  # beyond k
    assert index["band"].to_list() == ["head"] * 2 + ["bulk"] * 12 + ["tail"] * 2
    assert 0.0 < rows["energy_rot"][0] < 1.0
    assert rows["energy_diag"][0] + rows["energy_rot"][0] == pytest.approx(1.0)


def test_compare_svd_files_with_and_without_factors(pair, tmp_path):
    dir_a, dir_b, *_ = pair
    expected, expected_index = compare(dir_a, dir_b, "all")
    svd_a = svd_checkpoint(dir_a, tmp_path / "a.safetensors", "all", factors=True)
    svd_b = svd_checkpoint(dir_b, tmp_path / "b.safetensors", "all", factors=True)
    f = SvdFile(svd_a)
    assert f.metadata["factors"] == "true" and "source" not in f.metadata and len(f.names) == 7
    from_files, from_files_index = compare(svd_a, svd_b, "all")
    assert from_files.select("matrix", "band").equals(expected.select("matrix", "band"))
    for col in ("mean_rel_dsigma", "mean_angle_u", "energy_diag", "alignment_u"):
        torch.testing.assert_close(
            torch.tensor(from_files[col].to_numpy()), torch.tensor(expected[col].to_numpy()), atol=1e-3, rtol=1e-3
        )
    # Without factors a file cannot stand in for the weights (and stores no path to them): the
    # paper-scale mode compares the checkpoints themselves.
    svd_only = svd_checkpoint(dir_a, tmp_path / "a-s.safetensors", ["q"])
    assert not SvdFile(svd_only).has_factors("model.layers.0.self_attn.q_proj.weight")
    with pytest.raises(CheckpointError, match="without factors"):
        compare(svd_only, dir_b, ["q"])


def test_compare_errors(pair, tmp_path):
    dir_a, dir_b, a, _ = pair
    short = {n: t for n, t in a.items() if n != "model.layers.1.mlp.up_proj.weight"}
    write_checkpoint(tmp_path / "short", short)
    with pytest.raises(CheckpointError, match="no tensor named model.layers.1.mlp.up_proj.weight"):
        compare(dir_a, tmp_path / "short", ["up"])
    wrong = dict(a, **{"model.layers.0.self_attn.q_proj.weight": torch.zeros(16, 8)})
    write_checkpoint(tmp_path / "wrong", wrong)
    with pytest.raises(CheckpointError, match="shape"):
        compare(dir_a, tmp_path / "wrong", ["q"])
    with pytest.raises(CheckpointError, match="neither a checkpoint directory nor an SVD file"):
        compare(dir_a, tmp_path / "missing", ["q"])


def test_write_spectrum_is_tidy_and_atomic(pair, tmp_path):
    dir_a, dir_b, *_ = pair
    summary, per_index = compare(dir_a, dir_b)
    out = tmp_path / "spectrum" / "a--b.parquet"
    assert write_spectrum(summary, per_index, out) == (tmp_path / "spectrum" / "a--b.index.parquet", out)
    assert pl.read_parquet(out).equals(summary)
    assert pl.read_parquet(index_path(out)).equals(per_index)
    assert sorted(p.name for p in out.parent.iterdir()) == ["a--b.index.parquet", "a--b.parquet"]
    with pytest.raises(ValueError, match=".parquet"):
        index_path(tmp_path / "a--b.csv")


def test_read_tensors_are_aligned_so_angles_do_not_depend_on_where_the_bytes_landed(tmp_path):
    # MKL's kernels depend on the alignment of their inputs: the same factors at different
    # offsets give principal angles that differ in the last bits (seen here: 3 results from 5
    # offsets), which made the spectrum tables of two identical runs differ by ~0.004 degrees.
    # Everything read from a safetensors file is therefore copied to an aligned buffer.
    from sftrl.checkpoints import aligned

    torch.manual_seed(0)
    # Vh-like factors of a 32 x 128 matrix (rows orthonormal): the shape where offsets mattered
    qa, _ = torch.linalg.qr(torch.randn(128, 32))
    qb, _ = torch.linalg.qr(qa + 1e-3 * torch.randn(128, 32))
    results = set()
    for offset in (0, 1, 2, 4, 8):
        views = []
        for q in (qa.T.contiguous(), qb.T.contiguous()):
            buf = torch.empty(q.numel() + 16)
            view = buf[offset : offset + q.numel()].view_as(q)
            view.copy_(q)
            views.append(aligned(view))
        assert all(v.data_ptr() % 64 == 0 for v in views)
        results.add(tuple(principal_angles(views[0].T, views[1].T, k=6).tolist()))
    assert len(results) == 1
