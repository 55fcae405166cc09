"""The toy world: deterministic rendering and splits, the toy_lt data set, and the knobs of the toy
foundation models (pre-training imbalance, view) measured on small, quickly trained models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables.backbones.toy import build_toy_backbone
from trainables.config import BackboneConfig, DatasetConfig, RuntimeConfig, ToyPretrainConfig, ToyWorldConfig
from trainables.data import build_splits
from trainables.data.longtail import longtail_counts
from trainables.metrics import p_groups, per_class_accuracy
from trainables.prior import estimate_prior
from trainables.world.render import make_world
from trainables.world.zoo import corpus_counts, load_or_train, predict, pretrain_prior, rank_to_class

REPO = Path(__file__).resolve().parents[1]
# 9 classes (P-groups of 3), 3 values per region: each half view confuses some classes.
WORLD = ToyWorldConfig(num_classes=9, n_max=60, test_per_class=30)
DATA = DatasetConfig(world=WORLD, imbalance_ratio=10, val_per_class=20)
# About 3 s per model on one thread; enough to learn the full composition (~97 % balanced).
SMALL = dict(corpus_size=2000, epochs=10, width=48, depth=2, lr=3e-3, alignment="aligned")


def _images(split) -> torch.Tensor:
    return torch.stack([split[i][0] for i in range(len(split))])


@pytest.fixture(scope="module")
def splits():
    return build_splits(DATA, RuntimeConfig())


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A zoo shared by the tests of this module: each small model trains once."""
    torch.set_num_threads(1)
    return str(tmp_path_factory.mktemp("zoo"))


def _backbone(zoo: str, splits, **pretrain):
    cfg = BackboneConfig(family="toy", pretrain=ToyPretrainConfig(**{**SMALL, **pretrain}))
    return build_toy_backbone(cfg, RuntimeConfig(zoo_dir=zoo), splits.class_names, world=WORLD)


def _zero_shot(bb, images: torch.Tensor) -> np.ndarray:
    """Zero-shot logits through the Backbone contract: encoder features -> zero-shot head."""
    return bb.zero_shot_logits(predict(bb.encoder, images)).numpy()


# ---------------------------------------------------------------------------------------------
# rendering and data set


def test_rendering_depends_only_on_seed_split_and_index():
    world = make_world(WORLD)
    labels, index = np.array([0, 1, 2, 3]), np.array([10, 11, 12, 13])
    batch = world.render(labels, "train", index)
    alone = world.render(labels[2:3], "train", index[2:3])
    assert batch.dtype == torch.uint8 and batch.shape == (4, 3, 32, 32)
    assert torch.equal(batch[2:3], alone)                          # batch composition is irrelevant
    assert torch.equal(batch, make_world(WORLD).render(labels, "train", index))
    assert not torch.equal(batch, world.render(labels, "test", index))          # split matters
    assert not torch.equal(batch, world.render(labels, "train", index + 1))     # index matters
    other = make_world(WORLD.model_copy(update={"seed": 1})).render(labels, "train", index)
    assert not torch.equal(batch, other)                                          # world seed matters


def test_every_part_is_shared_but_every_composition_is_unique():
    world = make_world(ToyWorldConfig())
    parts = world.parts
    assert len({tuple(r) for r in parts}) == world.num_classes
    for k in range(world.num_parts):
        assert np.bincount(parts[:, k]).min() >= 2, f"a value of region {k} names a single class"
    top = world.view_mask("top")
    assert len({tuple(r[top]) for r in parts}) < world.num_classes  # the top half is incomplete


def test_view_outside_regions_show_label_independent_parts():
    world = make_world(WORLD)
    top = world.view_mask("top")
    assert top.tolist() == [True, True, False, False]
    labels = np.zeros(200, dtype=np.int64)
    parts = world.parts_for(labels, "pretrain0", np.arange(200), top)
    assert (parts[:, top] == world.parts[0, top]).all()
    assert len(np.unique(parts[:, 2])) == world.vocab.shape[1]  # bottom regions vary freely
    with pytest.raises(ValueError, match="0\\+2"):
        world.view_mask("middle")


def test_toy_lt_splits_are_deterministic_long_tailed_and_disjoint(splits):
    again = build_splits(DATA, RuntimeConfig())
    for name in ("train", "val", "test"):
        a, b = getattr(splits, name), getattr(again, name)
        assert np.array_equal(a.labels, b.labels)
        assert torch.equal(_images(a), _images(b))
    expected = longtail_counts(WORLD.n_max, WORLD.num_classes, DATA.imbalance_ratio, DATA.profile)
    assert splits.train_counts.tolist() == expected.tolist()
    assert np.bincount(splits.train.labels).tolist() == expected.tolist()
    assert np.bincount(splits.val.labels).tolist() == [DATA.val_per_class] * WORLD.num_classes
    assert np.bincount(splits.test.labels).tolist() == [WORLD.test_per_class] * WORLD.num_classes
    described = {splits.train.describe(i) for i in range(len(splits.train))}
    assert not described & {splits.val.describe(i) for i in range(len(splits.val))}
    img, label = splits.train[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32) and label == 0
    other = build_splits(DATA.model_copy(update={"split_seed": 1}), RuntimeConfig())
    assert not np.array_equal(_images(splits.train).numpy(), _images(other.train).numpy())


def test_toy_lt_rejects_a_num_classes_that_contradicts_the_world():
    with pytest.raises(ValueError, match="dataset.world.num_classes"):
        build_splits(DATA.model_copy(update={"num_classes": 5}), RuntimeConfig())


# ---------------------------------------------------------------------------------------------
# pre-training prior


@pytest.mark.parametrize("alignment,head", [("aligned", 0), ("reversed", 8)])
def test_pretrain_prior_has_the_requested_ratio_and_alignment(alignment, head):
    prior = pretrain_prior(WORLD, ToyPretrainConfig(imbalance_ratio=50, alignment=alignment))
    assert prior.sum() == pytest.approx(1) and prior.max() / prior.min() == pytest.approx(50)
    assert int(prior.argmax()) == head
    counts = corpus_counts(prior, 2000)
    assert counts.sum() == 2000 and counts.min() >= 1


def test_shuffled_alignment_follows_prior_seed_not_the_model_seed():
    a = rank_to_class(9, ToyPretrainConfig(alignment="shuffled", seed=0, prior_seed=7))
    b = rank_to_class(9, ToyPretrainConfig(alignment="shuffled", seed=1, prior_seed=7))
    c = rank_to_class(9, ToyPretrainConfig(alignment="shuffled", seed=1))
    assert np.array_equal(a, b) and not np.array_equal(a, c) and sorted(a) == list(range(9))


# ---------------------------------------------------------------------------------------------
# the knobs, measured on trained toy models


def test_backbone_contract_encoder_features_and_zero_shot_head(zoo, splits):
    bb = _backbone(zoo, splits, imbalance_ratio=1)
    x = _images(splits.test)[:8]
    feats = predict(bb.encoder, x)
    assert feats.shape == (8, bb.feature_dim) == (8, SMALL["width"])
    assert bb.zero_shot_weight.shape == (WORLD.num_classes, bb.feature_dim) and not bb.zero_shot_normalize
    assert len(bb.blocks) == SMALL["depth"] and hasattr(bb.blocks[0], bb.mlp_norm)
    assert bb.true_prior == pytest.approx(np.full(9, 1 / 9))
    assert bb.meta["zero_shot_val_acc"] > 0.8  # a balanced, full-view model knows the classes


def test_higher_pretrain_imbalance_widens_the_p_many_p_few_gap(zoo, splits):
    x, y = _images(splits.test), splits.test.labels
    gaps = {}
    for ir in (1, 50):
        bb = _backbone(zoo, splits, imbalance_ratio=ir)
        acc = per_class_accuracy(_zero_shot(bb, x), y, WORLD.num_classes)
        groups = p_groups(bb.true_prior)
        gaps[ir] = acc[groups == 0].mean() - acc[groups == 2].mean()
    assert gaps[50] - gaps[1] > 0.3, gaps


def test_estimated_prior_ranks_classes_like_the_true_pretrain_prior(zoo, splits):
    bb = _backbone(zoo, splits, imbalance_ratio=50)
    q_hat = estimate_prior(_zero_shot(bb, _images(splits.val)), splits.val.labels)
    rank = lambda a: np.argsort(np.argsort(a))  # noqa: E731
    spearman = np.corrcoef(rank(q_hat), rank(bb.true_prior))[0, 1]
    assert spearman > 0.8, (q_hat.round(3), bb.true_prior.round(3))


def test_models_with_different_views_disagree_more_than_seeds_of_one_view(zoo, splits):
    x = _images(splits.test)
    pred = {(view, seed): _zero_shot(_backbone(zoo, splits, imbalance_ratio=10, view=view, seed=seed), x).argmax(1)
            for view, seed in [("top", 0), ("top", 1), ("bottom", 0)]}
    same_view = (pred["top", 0] != pred["top", 1]).mean()
    cross_view = min((pred["top", s] != pred["bottom", 0]).mean() for s in (0, 1))
    assert cross_view > same_view + 0.15, (same_view, cross_view)


# ---------------------------------------------------------------------------------------------
# the zoo


_RACER = """
import json, sys, torch
torch.set_num_threads(1)
from trainables.config import ToyPretrainConfig, ToyWorldConfig
from trainables.world.zoo import load_or_train
e = load_or_train(ToyWorldConfig(num_classes=3), ToyPretrainConfig(corpus_size=100, epochs=1, width=16,
                  depth=1), sys.argv[1])
print(json.dumps({"trained": e.trained, "by": e.meta["trained_by_pid"], "key": e.key}))
"""


def test_zoo_trains_a_model_once_when_two_processes_race(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(tmp_path)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(o["trained"] for o in outs) == [False, True]
    assert outs[0]["by"] == outs[1]["by"] and outs[0]["key"] == outs[1]["key"]
    entries = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert [p.name for p in entries] == [outs[0]["key"]]        # no temporary directory left behind
    assert {f.name for f in entries[0].iterdir()} == {"model.safetensors", "meta.json"}


def test_zoo_key_ignores_downstream_sizes_but_not_pretraining_knobs(tmp_path):
    pre = ToyPretrainConfig(corpus_size=100, epochs=1, width=16, depth=1)
    world = ToyWorldConfig(num_classes=3)
    first = load_or_train(world, pre, tmp_path)
    same = load_or_train(world.model_copy(update={"n_max": 11, "test_per_class": 7}), pre, tmp_path)
    assert first.trained and not same.trained and same.key == first.key
    for name, p in first.model.state_dict().items():
        assert torch.equal(p, same.model.state_dict()[name]), name
    other = load_or_train(world, pre.model_copy(update={"imbalance_ratio": 2.0}), tmp_path)
    assert other.trained and other.key != first.key


def test_prior_agreement_mixes_the_member_ranking_with_the_reference_by_a_gaussian_copula():
    from trainables.metrics import spearman

    world = ToyWorldConfig(num_classes=30)
    ref = pretrain_prior(world, ToyPretrainConfig(alignment="shuffled", prior_seed=None, seed=0))
    same = pretrain_prior(world, ToyPretrainConfig(prior_agreement=1.0, seed=5))
    rev = pretrain_prior(world, ToyPretrainConfig(prior_agreement=-1.0, seed=5))
    assert np.allclose(same, ref)  # rho = 1: the reference prior whatever the member's seed
    assert spearman(rev, ref) == pytest.approx(-1.0)  # rho = -1: the reference reversed
    rhos = {rho: np.mean([spearman(pretrain_prior(world, ToyPretrainConfig(prior_agreement=rho, seed=s)), ref)
                          for s in range(20)]) for rho in (0.9, 0.5, 0.0, -0.5)}
    assert rhos[0.9] > rhos[0.5] > rhos[0.0] > rhos[-0.5]  # agreement falls with rho
    assert abs(rhos[0.0]) < 0.15


def test_a_prior_seed_equal_to_the_seed_is_stored_as_none():
    assert ToyPretrainConfig(seed=3, prior_seed=3).prior_seed is None
    assert ToyPretrainConfig(seed=3, prior_seed=4).prior_seed == 4
    assert ToyPretrainConfig(seed=3, prior_seed=4).effective_prior_seed() == 4
    assert ToyPretrainConfig(seed=3).effective_prior_seed() == 3
