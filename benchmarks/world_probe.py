"""Probe the toy world's parameter-imbalance knob; prints one JSON object.

For each pre-training imbalance ratio: pre-training time of a toy model (1 torch thread unless
--threads), its zero-shot accuracy on the balanced ``toy_lt`` test split overall and by P-group
(equal thirds of classes by the true pre-training prior), and the Spearman correlation of the
GLA prior estimate (on the balanced validation split) with the true prior.

    .venv/bin/python -m benchmarks.world_probe --ir 1 100 --zoo-dir /tmp/world_probe_zoo
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np
import torch

from trainables.backbones.toy import build_toy_backbone
from trainables.config import BackboneConfig, DatasetConfig, RuntimeConfig, ToyPretrainConfig
from trainables.metrics import p_groups, per_class_accuracy
from trainables.prior import estimate_prior
from trainables.world.data import toy_lt
from trainables.world.zoo import predict

GROUPS = ("p_many", "p_medium", "p_few")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (no ties expected: priors are continuous)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def probe(ir: float, pre_kw: dict, zoo_dir: str) -> dict:
    """Train (or load) the toy model with pre-training imbalance ``ir`` and measure its bias."""
    data_cfg = DatasetConfig()
    splits = toy_lt(data_cfg, RuntimeConfig())
    bcfg = BackboneConfig(family="toy", pretrain=ToyPretrainConfig(imbalance_ratio=ir, **pre_kw))
    bb = build_toy_backbone(bcfg, RuntimeConfig(zoo_dir=zoo_dir), splits.class_names, world=data_cfg.world)

    def logits(split):  # zero-shot logits through the Backbone contract (encoder + zero-shot head)
        images = torch.stack([split[i][0] for i in range(len(split))])
        return bb.zero_shot_logits(predict(bb.encoder, images)).numpy()

    test_z, val_z = logits(splits.test), logits(splits.val)
    acc = per_class_accuracy(test_z, splits.test.labels, splits.num_classes)
    groups = p_groups(bb.true_prior)
    by_group = {g: round(float(acc[groups == i].mean()), 4) for i, g in enumerate(GROUPS)}
    q_hat = estimate_prior(val_z, splits.val.labels)
    return {"pretrain_imbalance_ratio": ir, "train_seconds": bb.meta["train_seconds"],
            "trained_now": bb.meta["trained_now"], "zero_shot_test_acc": round(float(acc.mean()), 4),
            **{f"zero_shot_test_{g}": v for g, v in by_group.items()},
            "p_many_minus_p_few": round(by_group["p_many"] - by_group["p_few"], 4),
            "prior_spearman_q_hat_vs_true": round(spearman(q_hat, bb.true_prior), 4),
            "pretrain_view": bcfg.pretrain.view, "alignment": bcfg.pretrain.alignment}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ir", type=float, nargs="+", default=[1.0, 100.0], help="pre-training imbalance ratios")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--zoo-dir", default=None, help="default: a fresh temporary folder (times a real training)")
    ap.add_argument("--view", default="all")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    zoo_dir = args.zoo_dir or tempfile.mkdtemp(prefix="world_probe_zoo_")
    pre_kw = {"view": args.view, "seed": args.seed}
    rows = [probe(ir, pre_kw, zoo_dir) for ir in args.ir]
    defaults = ToyPretrainConfig().model_dump(include={"corpus_size", "epochs", "width", "depth", "patch_size"})
    print(json.dumps({"torch_threads": args.threads, "pretrain_defaults": defaults, "zoo_dir": zoo_dir,
                      "results": rows}, indent=1))


if __name__ == "__main__":
    main()
