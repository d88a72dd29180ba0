"""Restoration edits (docs/study.md §8) on small random matrices and tiny checkpoints, and the streaming
checkpoint reader/writer they stand on."""

import json

import pytest
import torch
from safetensors.torch import save_file

from sftrl.checkpoints import Checkpoint, CheckpointError, ShardWriter
from sftrl.edits import (
    band_counts,
    edit_checkpoint,
    layer_reset,
    parse_layers,
    sigma_swap,
    triplet_swap,
    uv_merge,
)
from sftrl.spectrum import svd_checkpoint

from conftest import save_tiny_llama

EDITS = {"uv-merge": uv_merge, "sigma-swap": sigma_swap, "triplet-swap": triplet_swap}


def known_svd(rows, cols, seed):
    """W = U diag(S) Vᵀ with orthonormal U, V and distinct descending S, so the SVD of W recovers
    these factors up to the sign of each (u_i, v_i) pair."""
    g = torch.Generator().manual_seed(seed)
    n = min(rows, cols)
    u = torch.linalg.qr(torch.randn(rows, n, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(cols, n, generator=g, dtype=torch.float64))[0]
    s = torch.linspace(10.0, 1.0, n, dtype=torch.float64) + 0.1 * torch.rand(n, generator=g, dtype=torch.float64)
    s = s.sort(descending=True).values
    return u, s, v, (u * s) @ v.T


def rank1_sum(parts):
    """Σ σ_i u_i v_iᵀ over (u, s, v) blocks; each term is invariant to the SVD's sign choice."""
    return sum((u * s) @ v.T for u, s, v in parts)


def assert_close(actual, expected, rtol=1e-4):
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.double(), expected.double(), atol=rtol * scale, rtol=0)


# ---------------------------------------------------------------------------------------------
# Tensor-level edits


@pytest.mark.parametrize(
    "n, top, bottom, expected",
    [
        (10, 0.25, 0.0, (3, 0)),  # 2.5 rounds half up
        (4096, 0.2, 0.0, (819, 0)),
        (10, 0.3, 0.0, (3, 0)),  # 0.3 * 10 = 3.0000000000000004
        (10, 0.8, 0.5, (8, 2)),  # the tail is clipped to n - kt, as in the study
        (7, 1.0, 0.3, (7, 0)),
        (10, 0.0, 0.0, (0, 0)),
    ],
)
def test_band_counts(n, top, bottom, expected):
    assert band_counts(n, top, bottom) == expected


def test_band_counts_rejects_bad_fractions():
    with pytest.raises(ValueError, match="top"):
        band_counts(10, 1.5)
    with pytest.raises(ValueError, match="bottom"):
        band_counts(10, 0.1, -0.1)


@pytest.mark.parametrize("method", EDITS)
def test_zero_fractions_return_the_target(method):
    *_, w_t = known_svd(12, 8, 0)
    *_, w_d = known_svd(12, 8, 1)
    w_t, w_d = w_t.float(), w_d.float()
    assert EDITS[method](w_t, w_d, 0.0) is w_t
    assert EDITS[method](w_t, w_d, 0.0, 0.0) is w_t


@pytest.mark.parametrize("method", EDITS)
@pytest.mark.parametrize("top, bottom", [(0.1, 0.0), (0.25, 0.25), (0.5, 0.0), (0.0, 0.3), (1.0, 0.0)])
def test_donor_equal_to_target_returns_the_target(method, top, bottom):
    *_, w = known_svd(16, 10, 2)
    w = w.float()
    assert_close(EDITS[method](w, w.clone(), top, bottom), w)


def test_uv_merge_top_one_is_donor_directions_with_target_values():
    u_t, s_t, v_t, w_t = known_svd(12, 8, 0)
    u_d, s_d, v_d, w_d = known_svd(12, 8, 1)
    merged = uv_merge(w_t.float(), w_d.float(), 1.0)
    assert_close(merged, rank1_sum([(u_d, s_t, v_d)]))
    # Its own SVD: the target's singular values on the donor's singular subspaces.
    u_m, s_m, vh_m = torch.linalg.svd(merged.double())
    torch.testing.assert_close(s_m, s_t, atol=1e-4, rtol=0)
    for k in (1, 3, 8):
        torch.testing.assert_close(u_m[:, :k] @ u_m[:, :k].T, u_d[:, :k] @ u_d[:, :k].T, atol=1e-4, rtol=0)
        torch.testing.assert_close(vh_m[:k].T @ vh_m[:k], v_d[:, :k] @ v_d[:, :k].T, atol=1e-4, rtol=0)


def test_uv_merge_restores_head_and_tail_directions_from_the_donor():
    u_t, s_t, v_t, w_t = known_svd(12, 8, 0)
    u_d, s_d, v_d, w_d = known_svd(12, 8, 1)
    kt, kb = band_counts(8, 0.25, 0.25)
    assert (kt, kb) == (2, 2)
    head, mid, tail = slice(0, 2), slice(2, 6), slice(6, 8)
    expected = rank1_sum(
        [
            (u_d[:, head], s_t[head], v_d[:, head]),
            (u_t[:, mid], s_t[mid], v_t[:, mid]),
            (u_d[:, tail], s_t[tail], v_d[:, tail]),
        ]
    )
    assert_close(uv_merge(w_t.float(), w_d.float(), 0.25, 0.25), expected)


def test_sigma_swap_puts_donor_values_on_target_directions():
    u_t, s_t, v_t, w_t = known_svd(12, 8, 0)
    u_d, s_d, v_d, w_d = known_svd(12, 8, 1)
    s_new = torch.cat([s_d[:2], s_t[2:7], s_d[7:]])  # top 0.25 → 2, bottom 0.1 → 1 of 8
    assert_close(sigma_swap(w_t.float(), w_d.float(), 0.25, 0.1), rank1_sum([(u_t, s_new, v_t)]))


def test_triplet_swap_takes_donor_triplets_in_the_bands():
    u_t, s_t, v_t, w_t = known_svd(12, 8, 0)
    u_d, s_d, v_d, w_d = known_svd(12, 8, 1)
    head, mid, tail = slice(0, 2), slice(2, 7), slice(7, 8)  # top 0.3 of 8 → 2, bottom 0.1 of 8 → 1
    expected = rank1_sum(
        [
            (u_d[:, head], s_d[head], v_d[:, head]),
            (u_t[:, mid], s_t[mid], v_t[:, mid]),
            (u_d[:, tail], s_d[tail], v_d[:, tail]),
        ]
    )
    assert_close(triplet_swap(w_t.float(), w_d.float(), 0.3, 0.1), expected)


def test_triplet_swap_of_the_whole_spectrum_is_a_plain_copy_of_the_donor():
    *_, w_t = known_svd(12, 8, 0)
    *_, w_d = known_svd(12, 8, 1)
    w_t, w_d = w_t.float(), w_d.float()
    assert torch.equal(triplet_swap(w_t, w_d, 0.5, 0.5), w_d)
    assert torch.equal(triplet_swap(w_t, w_d, 1.0), w_d)


@pytest.mark.parametrize("method", EDITS)
def test_edits_keep_the_target_dtype_and_accept_precomputed_svds(method):
    *_, w_t = known_svd(10, 14, 3)
    *_, w_d = known_svd(10, 14, 4)
    w_t, w_d = w_t.to(torch.bfloat16), w_d.float()
    out = EDITS[method](w_t, w_d, 0.2, 0.2)
    assert out.dtype == torch.bfloat16 and out.shape == w_t.shape
    svd_t = torch.linalg.svd(w_t.float(), full_matrices=False)
    svd_d = torch.linalg.svd(w_d, full_matrices=False)
    reused = EDITS[method](w_t, None, 0.2, 0.2, svd_target=svd_t, svd_donor=svd_d)
    torch.testing.assert_close(reused.float(), out.float())


def test_edits_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        uv_merge(torch.zeros(4, 3), torch.zeros(3, 4), 0.5)


def test_parse_layers():
    assert parse_layers("0-3") == [0, 1, 2, 3]
    assert parse_layers("0-1,5, 8-9") == [0, 1, 5, 8, 9]
    for bad in ("", "a", "3-1", "-1"):
        with pytest.raises(ValueError, match="layers"):
            parse_layers(bad)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def load_and_generate(path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)
    return model


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    target = save_tiny_llama(root / "target", seed=0, max_shard_size="50KB")  # sharded
    donor = save_tiny_llama(root / "donor", seed=1)  # one file
    return target, donor


def test_checkpoint_reads_single_and_sharded(tiny_pair):
    target, donor = tiny_pair
    assert (target / "model.safetensors.index.json").exists() and (donor / "model.safetensors").exists()
    for path in tiny_pair:
        ckpt = Checkpoint(path)
        names = ckpt.names
        assert len(names) == 38  # tied: embed_tokens only, no lm_head
        assert "lm_head.weight" not in names
        assert names[0] == "model.embed_tokens.weight" and names[-1] == "model.norm.weight"  # natural order
        assert ckpt.shapes["model.layers.0.mlp.up_proj.weight"] == (64, 32)
        assert ckpt.read("model.embed_tokens.weight").shape == (40, 32)
    with pytest.raises(CheckpointError, match="no tensor named"):
        Checkpoint(target).read("nope.weight")


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        Checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no config.json"):
        Checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        Checkpoint(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(CheckpointError, match="gone.safetensors, which is missing"):
        Checkpoint(tmp_path)
    save_file({"b": torch.zeros(2)}, tmp_path / "gone.safetensors")
    with pytest.raises(CheckpointError, match="missing from the shards"):
        Checkpoint(tmp_path)


def test_shard_writer_shards_copies_side_files_and_round_trips(tiny_pair, tmp_path):
    target, _ = tiny_pair
    src = Checkpoint(target)
    out = tmp_path / "copy"
    with ShardWriter(out, copy_from=target, max_shard_bytes=30_000) as writer:
        for name in src.names:
            writer.write(name, src.read(name))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert index["metadata"]["total_size"] == sum(src.read(n).numel() * 4 for n in src.names)
    assert (out / "config.json").read_text() == (target / "config.json").read_text()
    assert (out / "generation_config.json").exists()
    copy = Checkpoint(out)
    assert copy.names == src.names
    for name in src.names:
        assert torch.equal(copy.read(name), src.read(name))
    assert [p.name for p in tmp_path.iterdir()] == ["copy"]  # no partial directory left


def test_shard_writer_is_atomic(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with ShardWriter(out, max_shard_bytes=10) as writer:
            writer.write("a", torch.zeros(4))
            writer.write("b", torch.ones(4))  # second shard, first one finished
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "x").write_text("")
    with pytest.raises(CheckpointError, match="already exists"):
        ShardWriter(out)


def test_edit_checkpoint_matches_in_memory_edit_and_loads(tiny_pair, tmp_path):
    target, donor = tiny_pair
    out = tmp_path / "uvmerge"
    report = edit_checkpoint(target, donor, out, "uv-merge", top=0.2, max_shard_bytes=40_000)
    t, d, o = Checkpoint(target), Checkpoint(donor), Checkpoint(out)
    assert len(report.from_donor) == 1 + 4 * 7  # every 2-D tensor: embeddings and projections
    assert len(report.from_target) == 4 * 2 + 1  # norms
    assert o.names == t.names
    for name in t.names:
        if name in report.from_donor:
            expected = uv_merge(t.read(name), d.read(name), 0.2)
            torch.testing.assert_close(o.read(name), expected)
            assert not torch.equal(o.read(name), t.read(name))
        else:
            assert torch.equal(o.read(name), t.read(name))
    model = load_and_generate(out)
    torch.testing.assert_close(
        model.state_dict()["model.layers.1.self_attn.q_proj.weight"], o.read("model.layers.1.self_attn.q_proj.weight")
    )


def test_edit_checkpoint_by_types_and_with_saved_svds(tiny_pair, tmp_path):
    target, donor = tiny_pair
    plain = edit_checkpoint(target, donor, tmp_path / "plain", "triplet-swap", 0.25, 0.25, types="q,down")
    assert len(plain.from_donor) == 8 and all(
        n.endswith(("q_proj.weight", "down_proj.weight")) for n in plain.from_donor
    )
    svd_t = svd_checkpoint(target, tmp_path / "t.safetensors", ["q", "k"], factors=True)
    svd_d = svd_checkpoint(donor, tmp_path / "d.safetensors", ["q"], factors=True)  # down: recomputed
    reused = edit_checkpoint(
        target,
        donor,
        tmp_path / "reused",
        "triplet-swap",
        0.25,
        0.25,
        types=["q", "down"],
        svd_target=svd_t,
        svd_donor=svd_d,
    )
    assert reused.from_donor == plain.from_donor
    a, b = Checkpoint(tmp_path / "plain"), Checkpoint(tmp_path / "reused")
    for name in a.names:
        torch.testing.assert_close(a.read(name), b.read(name), atol=1e-5, rtol=1e-4)


def test_edit_checkpoint_rejects_incompatible_checkpoints(tiny_pair, tmp_path):
    target, donor = tiny_pair
    wide = save_tiny_llama(tmp_path / "wide", seed=2, vocab_size=48)
    with pytest.raises(CheckpointError, match="differ in shape, e.g. model.embed_tokens.weight"):
        edit_checkpoint(target, wide, tmp_path / "out", "uv-merge", 0.2)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((donor / "config.json").read_text())
    src = Checkpoint(donor)
    save_file({n: src.read(n) for n in src.names if n != "model.norm.weight"}, partial / "model.safetensors")
    with pytest.raises(CheckpointError, match="1 only in the target \\(e.g. model.norm.weight\\)"):
        edit_checkpoint(target, partial, tmp_path / "out", "uv-merge", 0.2)
    with pytest.raises(CheckpointError, match="not a directory"):
        edit_checkpoint(target, tmp_path / "nowhere", tmp_path / "out", "uv-merge", 0.2)
    with pytest.raises(ValueError, match="method"):
        edit_checkpoint(target, donor, tmp_path / "out", "swap-everything", 0.2)
    assert not (tmp_path / "out").exists()


def test_layer_reset(tiny_pair, tmp_path):
    target, donor = tiny_pair
    out = tmp_path / "reset"
    report = layer_reset(target, donor, out, [0, 1])
    assert len(report.from_donor) == 2 * 9 + 1  # two layers (7 projections, 2 norms) + tied embedding
    assert report.params == {"layers": "0-1", "embeddings": True}
    t, d, o = Checkpoint(target), Checkpoint(donor), Checkpoint(out)
    for name in t.names:
        source = d if name in report.from_donor else t
        assert torch.equal(o.read(name), source.read(name)), name
    assert "model.layers.1.input_layernorm.weight" in report.from_donor
    assert "model.layers.2.self_attn.q_proj.weight" in report.from_target
    load_and_generate(out)

    kept = layer_reset(target, donor, tmp_path / "no-emb", [3], embeddings=False)
    assert "model.embed_tokens.weight" in kept.from_target and len(kept.from_donor) == 9
    with pytest.raises(CheckpointError, match="no decoder layer"):
        layer_reset(target, donor, tmp_path / "bad", [4])
