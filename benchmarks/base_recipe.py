"""Quality per minute of the tiny base's pretraining recipe: the sweep behind ``base:`` in config.yaml.

    python benchmarks/base_recipe.py                              # the default variants, 1 thread
    python benchmarks/base_recipe.py --variant steps=600 --variant steps=600,lr=3e-3 --threads 2

Each variant overrides keys of the config's ``base:`` section (``steps``, ``lr``, ``warmup_steps``,
``batch_size``, ``scheduler``), pretrains the tiny model of ``model.tiny`` on the config's
pretraining data through ``sftrl.pretrain`` (the ``base`` rule's code), then measures what the
base is worth to the study: the base itself and a 10-step SFT probe from it (the study's SFT
settings, through ``sftrl.sft``; the default study's OOD peak lies near step 10) are both played on
the study's evaluation hands with its 5-turn verifier (``sftrl.evaluate``). Prints one row per
variant: pretraining minutes, the final loss, the base's first-attempt numbers-correct on ID and
OOD hands (does it read the prompt's rule?), and the probe's ID and OOD accuracy.

The data sets are generated from the config exactly as the ``data_*`` rules write them. Nothing is
written outside a temporary directory.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
import yaml

from sftrl import data
from sftrl.evaluate import GenerationSettings, evaluate_model
from sftrl.models import build_tiny_model, build_tiny_tokenizer, load_model, load_tokenizer
from sftrl.pretrain import pretrain
from sftrl.sft import TrainSettings, train_segment

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VARIANTS = ["steps=600", "steps=800", "steps=1200", "steps=800,lr=3.0e-3"]
PROBE_STEP = 10


def parse_variant(text: str) -> dict:
    """``steps=600,lr=3e-3`` -> {"steps": 600, "lr": 0.003} (numbers as numbers, whatever YAML
    would make of ``3e-3``)."""
    out = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        value = value.strip()
        for kind in (int, float):
            try:
                value = kind(value)
                break
            except ValueError:
                continue
        out[key.strip()] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    ap.add_argument("--variant", action="append", help="base: keys to override, e.g. steps=600,lr=3e-3")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(Path(args.config).read_text())
    d, arch, template = cfg["data"], cfg["model"]["tiny"], cfg["model"]["template"]
    heldout = data.heldout_multisets(d["holdout_fraction"], d["holdout_seed"])
    pretrain_data = data.make_pretrain(
        d["pretrain_size"], d["seed"], template, heldout, d["answer"], d["pretrain_feedback"], d["pretrain_wrapped"]
    )
    sft_data = data.make_sft(d["sft_size"], d["seed"], template, heldout, answer=d["answer"])
    hands = {s: data.make_eval(s, d["eval_size"], d["eval_seed"], template, heldout) for s in ("id", "ood")}
    e = cfg["eval"]
    settings = GenerationSettings(e["max_new_tokens"], e["batch_size"], e["decoding"], e["seed"])

    def play(model_dir: Path) -> dict:
        res = evaluate_model(model_dir, hands, template, e["turns"], settings, e["arithmetic"], progress=False)
        return {split: summary for split, (_, summary) in res.items()}

    rows = []
    for text in args.variant or DEFAULT_VARIANTS:
        base_cfg = copy.deepcopy(cfg["base"]) | parse_variant(text)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            tokenizer = build_tiny_tokenizer()
            model = build_tiny_model(arch, tokenizer, seed=arch["seed"])
            hp = TrainSettings.from_config(base_cfg, max_length=arch["max_position_embeddings"])
            tic = time.perf_counter()
            last = pretrain(model, tokenizer, pretrain_data, hp, tmp / "base", log_every=max(1, hp.max_steps // 10))
            minutes = (time.perf_counter() - tic) / 60
            base = play(tmp / "base")
            sft_hp = TrainSettings.from_config(cfg["sft"], max_length=arch["max_position_embeddings"])
            train_segment(load_model(tmp / "base"), load_tokenizer(tmp / "base"), sft_data, sft_hp, PROBE_STEP,
                          tmp / "probe", tmp / "work")  # fmt: skip
            probe = play(tmp / "probe")
        rows.append((text, minutes, last["loss"], base, probe))
        print(f"{text}: {minutes:.1f} min, loss {last['loss']:.3f}, base numbers-correct ID/OOD "
              f"{base['id']['numbers_correct']:.3f}/{base['ood']['numbers_correct']:.3f}, probe ID/OOD "
              f"{probe['id']['accuracy']:.3f}/{probe['ood']['accuracy']:.3f}", flush=True)  # fmt: skip

    print(f"\nbase recipe sweep ({args.threads} thread(s); probe = {PROBE_STEP} SFT steps from the base; "
          f"accuracy within {e['turns']} attempts on {d['eval_size']} hands)\n")  # fmt: skip
    print("| variant | pretraining min | final loss | base ID / OOD numbers-correct % | probe ID % | probe OOD % |")
    print("|---|---|---|---|---|---|")
    for text, minutes, loss, base, probe in rows:
        print(f"| {text} | {minutes:.1f} | {loss:.3f} | {100 * base['id']['numbers_correct']:.1f} / "
              f"{100 * base['ood']['numbers_correct']:.1f} | {100 * probe['id']['accuracy']:.1f} | "
              f"{100 * probe['ood']['accuracy']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
