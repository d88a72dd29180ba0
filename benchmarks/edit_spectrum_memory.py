"""Peak memory and SVD overhead of the streaming edit and spectrum code.

Builds two synthetic fp32 checkpoints of at least 1 GiB each (Llama-like names, sharded: a
target and a donor = target + noise) in a temporary directory, then runs in fresh subprocesses:

- bare:     torch.linalg.svd (fp32, full_matrices=False) of every 2-D tensor of both checkpoints
            (reading each tensor included);
- edit:     sftrl.edits.edit_checkpoint(method="uv-merge", top=0.2, types="all"), end to end;
- spectrum: sftrl.spectrum.compare(types="all") + write_spectrum, end to end.

Edit and spectrum both need two SVDs per matrix, exactly the bare run's work, so
overhead = run / bare − 1 (goal < 10%), for wall and CPU time; each run also times its own calls
to torch.linalg.svd, which gives an overhead immune to load changes between runs. Peak memory is
each child's own ru_maxrss, set against the goal 3 × largest tensor + 500 MB and against the bare
run's peak (what the SVDs alone cost); "after import" is the child's RSS once torch, polars and
sftrl are loaded.

    python benchmarks/edit_spectrum_memory.py [--layers 26] [--hidden 1024] [--intermediate 2048]
                                              [--device cpu] [--threads N]

On a shared machine pass --threads 1: two OpenMP threads competing with other processes for two
cores make single SVDs vary by 10x, which swamps the overhead being measured.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 1e6


def rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / MB
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # KiB on Linux


def shapes(layers: int, hidden: int, intermediate: int) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (intermediate, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (hidden,)
        for proj in ("q", "k", "v", "o"):
            out[p + f"self_attn.{proj}_proj.weight"] = (hidden, hidden)
        out[p + "post_attention_layernorm.weight"] = (hidden,)
        out[p + "mlp.gate_proj.weight"] = (intermediate, hidden)
        out[p + "mlp.up_proj.weight"] = (intermediate, hidden)
        out[p + "mlp.down_proj.weight"] = (hidden, intermediate)
    out["model.norm.weight"] = (hidden,)
    return out


def make_checkpoints(root: Path, args) -> tuple[Path, Path, int, int]:
    import torch

    from sftrl.checkpoints import ShardWriter

    specs = shapes(args.layers, args.hidden, args.intermediate)
    config = {
        "model_type": "llama",
        "hidden_size": args.hidden,
        "intermediate_size": args.intermediate,
        "num_hidden_layers": args.layers,
        "vocab_size": args.intermediate,
        "torch_dtype": "float32",
    }
    target, donor = root / "target", root / "donor"
    with ShardWriter(target, max_shard_bytes=400_000_000) as t, ShardWriter(donor, max_shard_bytes=400_000_000) as d:
        for i, (name, shape) in enumerate(specs.items()):
            g = torch.Generator().manual_seed(i)
            w = torch.randn(*shape, generator=g) * 0.02
            t.write(name, w)
            d.write(name, w + 0.002 * torch.randn(*shape, generator=g))
    for path in (target, donor):
        (path / "config.json").write_text(json.dumps(config))
    sizes = [4 * torch.Size(s).numel() for s in specs.values()]
    return target, donor, sum(sizes), max(sizes)


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(mode: str, root: Path, device: str, threads: int | None) -> dict:
    import torch

    from sftrl.checkpoints import Checkpoint
    from sftrl.edits import edit_checkpoint
    from sftrl.spectrum import compare, select_matrices, write_spectrum

    if threads:
        torch.set_num_threads(threads)
    after_import = rss_now_mb()

    # Time spent inside torch.linalg.svd, accumulated in the same run, so the in-run overhead
    # (wall / svd_s - 1) does not depend on how loaded the machine was between runs.
    svd_s = 0.0
    bare_svd = torch.linalg.svd

    def timed_svd(*args, **kwargs):
        nonlocal svd_s
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = bare_svd(*args, **kwargs)
        if device != "cpu":
            torch.cuda.synchronize()
        svd_s += time.perf_counter() - start
        return result

    torch.linalg.svd = timed_svd
    target, donor = root / "target", root / "donor"
    start_wall, start_cpu = time.perf_counter(), cpu_s()
    if mode == "bare":
        for path in (target, donor):
            ckpt = Checkpoint(path)
            for name, _, _ in select_matrices(ckpt.names, "all", ckpt.shapes):
                torch.linalg.svd(ckpt.read(name).to(device), full_matrices=False)
    elif mode == "edit":
        edit_checkpoint(target, donor, root / "edited", "uv-merge", 0.2, types="all", device=device)
    elif mode == "spectrum":
        summary, per_index = compare(target, donor, "all", device=device)
        write_spectrum(summary, per_index, root / "target--donor.parquet")
    else:
        raise ValueError(mode)
    return {
        "mode": mode,
        "wall_s": time.perf_counter() - start_wall,
        "cpu_s": cpu_s() - start_cpu,
        "svd_s": svd_s,
        "peak_rss_mb": peak_rss_mb(),
        "after_import_mb": after_import,
    }


def run_child(mode: str, root: Path, device: str, threads: int | None) -> dict:
    result = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--root",
            str(root),
            "--device",
            device,
            "--threads",
            str(threads or 0),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=26)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the children (0: torch's default)")
    parser.add_argument("--child", choices=["bare", "edit", "spectrum"], help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.root, args.device, args.threads)))
        return

    import torch

    with tempfile.TemporaryDirectory(prefix="sftrl-bench-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        target, donor, total, largest = make_checkpoints(root, args)
        n_shards = len(list(target.glob("model-*.safetensors")))
        print(
            f"synthetic fp32 checkpoint: {total / 2**30:.2f} GiB in {n_shards} shards, {args.layers} layers, "
            f"largest tensor {largest / MB:.1f} MB; target and donor written in {time.perf_counter() - start:.0f} s"
        )
        threads = args.threads or torch.get_num_threads()
        print(f"device {args.device}, torch {torch.__version__}, {threads} thread(s) per child")
        goal = 3 * largest / MB + 500
        results = {}
        for mode in ("bare", "edit", "spectrum"):
            r = results[mode] = run_child(mode, root, args.device, args.threads)
            print(
                f"  {mode:8s} wall {r['wall_s']:6.1f} s  cpu {r['cpu_s']:6.1f} s  in svd {r['svd_s']:6.1f} s  "
                f"peak RSS {r['peak_rss_mb']:4.0f} MB (after import {r['after_import_mb']:.0f} MB)",
                flush=True,
            )
        bare = results["bare"]
        print(f"\nmemory goal: 3 x largest tensor + 500 MB = {goal:.0f} MB; bare SVDs: {bare['peak_rss_mb']:.0f} MB")
        print("time: 2 SVDs per matrix in every run; overhead = run / bare - 1 (goal < 10%)")
        for mode in ("edit", "spectrum"):
            r = results[mode]
            verdict = "meets" if r["peak_rss_mb"] <= goal else "MISSES"
            print(
                f"  {mode:8s} peak {r['peak_rss_mb']:.0f} MB ({verdict} the goal; "
                f"{r['peak_rss_mb'] - bare['peak_rss_mb']:+.0f} MB vs bare SVDs)   overhead: "
                f"wall {100 * (r['wall_s'] / bare['wall_s'] - 1):+.1f}%, "
                f"cpu {100 * (r['cpu_s'] / bare['cpu_s'] - 1):+.1f}%, "
                f"in-run wall / time in svd {100 * (r['wall_s'] / r['svd_s'] - 1):+.1f}%"
            )


if __name__ == "__main__":
    main()
