"""Data sets: long-tailed counts, CIFAR pickle folders and OLTR-style split files, written in their
real formats into tmp_path."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.config import DatasetConfig, RuntimeConfig
from trainables.data import build_splits
from trainables.data.longtail import d_groups, longtail_counts, longtail_indices, validation_counts

RUNTIME = RuntimeConfig()


# ---------------------------------------------------------------------------------------------
# long-tailed counts and groups

@pytest.mark.parametrize("n_max,C,ir,total", [
    (500, 100, 100, 10847), (500, 100, 50, 12608), (500, 100, 10, 19573),     # CIFAR-100-LT
    (5000, 10, 100, 12406), (5000, 10, 50, 13996), (5000, 10, 10, 20431),     # CIFAR-10-LT
])
def test_exp_counts_match_published_cifar_lt_sizes(n_max, C, ir, total):
    counts = longtail_counts(n_max, C, ir, "exp")
    assert counts.sum() == total
    assert counts[0] == n_max and counts[-1] == int(n_max / ir)


def test_step_counts_put_half_the_classes_at_n_max_and_half_at_n_max_over_ir():
    counts = longtail_counts(500, 10, 50, "step")
    assert counts.tolist() == [500] * 5 + [10] * 5


def test_d_groups_thresholds_many_above_100_few_below_20():
    assert d_groups(np.array([500, 101, 100, 20, 19, 1])).tolist() == [0, 0, 1, 1, 2, 2]


def test_longtail_indices_error_names_the_class_without_enough_images():
    labels = np.array([0] * 10 + [1] * 3)
    with pytest.raises(ValueError, match="class 1 has 3 images"):
        longtail_indices(labels, np.array([5, 2]), seed=0, val_per_class=2)


@pytest.mark.parametrize("ir,total,class1_val", [(100, 10847, 20), (50, 12608, 20), (10, 19573, 12)])
def test_cifar100_lt_train_is_the_benchmark_and_val_comes_from_unused_images(ir, total, class1_val):
    labels = np.repeat(np.arange(100), 500)  # CIFAR-100's training labels: 500 per class
    counts = longtail_counts(500, 100, ir)
    val_n = validation_counts(counts, np.full(100, 500), 20)
    train, val = longtail_indices(labels, counts, seed=0, val_per_class=val_n)
    assert len(train) == total and np.bincount(labels[train], minlength=100).tolist() == counts.tolist()
    assert not set(train) & set(val)
    # the head class uses all 500 images: no validation image; every other class gets up to 20
    assert val_n[0] == 0 and val_n[1] == class1_val and (val_n[2:] == 20).all()
    assert np.bincount(labels[val], minlength=100).tolist() == val_n.tolist()


def test_val_per_class_zero_gives_an_empty_validation_split():
    labels = np.repeat(np.arange(3), 20)
    train, val = longtail_indices(labels, np.array([20, 5, 2]), seed=0, val_per_class=0)
    assert len(train) == 27 and len(val) == 0
    assert DatasetConfig(val_per_class=0).val_per_class == 0


def test_longtail_indices_are_seeded_and_disjoint():
    labels = np.repeat(np.arange(3), 20)
    a = longtail_indices(labels, np.array([10, 5, 2]), seed=1, val_per_class=4)
    b = longtail_indices(labels, np.array([10, 5, 2]), seed=1, val_per_class=4)
    c = longtail_indices(labels, np.array([10, 5, 2]), seed=2, val_per_class=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert not set(a[0]) & set(a[1])
    assert np.bincount(labels[a[0]]).tolist() == [10, 5, 2]
    assert np.bincount(labels[a[1]]).tolist() == [4, 4, 4]


# ---------------------------------------------------------------------------------------------
# CIFAR folders

def _images(n: int, marker: int, seed: int) -> np.ndarray:
    """uint8 [n, 3072] CIFAR rows, each unique: the row index in bytes 0-1, ``marker`` in byte 2."""
    x = np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)
    x[:, 0], x[:, 1], x[:, 2] = np.arange(n) % 256, np.arange(n) // 256, marker
    return x


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(root: Path, per_class: int = 300, test_per_class: int = 30) -> Path:
    """A CIFAR-10 'python' folder in the real layout with ``per_class`` training images per class."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), per_class))
    x = _images(len(labels), 0, 1)
    for i, (xs, ys) in enumerate(zip(np.array_split(x, 5), np.array_split(labels, 5)), start=1):
        _dump(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "data": xs,
                                           "labels": ys.tolist(), "filenames": [""] * len(ys)})
    y_test = np.repeat(np.arange(10), test_per_class)
    _dump(folder / "test_batch", {"data": _images(len(y_test), 1, 2), "labels": y_test.tolist()})
    _dump(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072})
    return root


def write_cifar100(root: Path, per_class: int = 30) -> Path:
    """A CIFAR-100 'python' folder (fine labels) with ``per_class`` training images per class."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    y = np.repeat(np.arange(100), per_class)
    _dump(folder / "train", {"data": _images(len(y), 0, 3), "fine_labels": y.tolist(),
                             "coarse_labels": (y // 5).tolist()})
    y_test = np.repeat(np.arange(100), 5)
    _dump(folder / "test", {"data": _images(len(y_test), 1, 4), "fine_labels": y_test.tolist()})
    _dump(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                            "coarse_label_names": [f"k{i}" for i in range(20)]})
    return root


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("cifar"))


def _rows(split) -> set[bytes]:
    return {split[i][0].numpy().tobytes() for i in range(len(split))}


@pytest.mark.parametrize("profile", ["exp", "step"])
@pytest.mark.parametrize("ir", [10, 50, 100])
def test_cifar10_lt_train_counts_follow_the_profile(cifar10_root, ir, profile):
    cfg = DatasetConfig(name="cifar10_lt", root=str(cifar10_root), imbalance_ratio=ir, profile=profile,
                        val_per_class=10)
    splits = build_splits(cfg, RUNTIME)
    i = np.arange(10)
    if profile == "exp":
        expected = np.array([int(300 * (1 / ir) ** (k / 9)) for k in i])
    else:
        expected = np.where(i < 5, 300, int(300 / ir))
    # the benchmark's counts exactly: validation only takes images the long-tailed split left unused
    assert np.bincount(splits.train.labels, minlength=10).tolist() == expected.tolist()
    assert splits.train_counts.tolist() == expected.tolist()
    assert splits.group_rule == "train_counts" and np.array_equal(splits.group_counts, expected)
    assert splits.class_names == [f"c{k}" for k in range(10)]


def test_cifar_val_uses_only_unused_training_images_and_is_disjoint(cifar10_root):
    splits = build_splits(DatasetConfig(name="cifar10_lt", root=str(cifar10_root), imbalance_ratio=10,
                                        val_per_class=7), RUNTIME)
    counts = longtail_counts(300, 10, 10)
    # class 0 uses all 300 images (no validation image); class 1 uses 232, the rest have >= 7 spare
    assert counts[0] == 300 and splits.train_counts.tolist() == counts.tolist()
    assert np.bincount(splits.val.labels, minlength=10).tolist() == [0] + [7] * 9
    assert splits.meta["short_validation"] == {0: 0}
    train, val, test = _rows(splits.train), _rows(splits.val), _rows(splits.test)
    assert len(train) == len(splits.train) and len(val) == len(splits.val)
    assert not train & val and not val & test and not train & test
    assert len(splits.test) == 300 and np.bincount(splits.test.labels).tolist() == [30] * 10


def test_cifar_val_does_not_depend_on_the_imbalance_ratio(cifar10_root):
    a, b = (build_splits(DatasetConfig(name="cifar10_lt", root=str(cifar10_root), imbalance_ratio=ir), RUNTIME)
            for ir in (10, 100))
    assert _rows(a.val) == _rows(b.val)


def test_cifar_images_are_uint8_chw_with_the_pickled_pixels(cifar10_root):
    splits = build_splits(DatasetConfig(name="cifar10_lt", root=str(cifar10_root)), RUNTIME)
    img, label = splits.test[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)
    with open(cifar10_root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    assert np.array_equal(img.numpy().reshape(-1), raw["data"][0]) and label == raw["labels"][0]


def test_cifar_limit_per_class_caps_val_and_test_only(cifar10_root):
    splits = build_splits(DatasetConfig(name="cifar10_lt", root=str(cifar10_root), imbalance_ratio=10,
                                        limit_per_class=3), RUNTIME)
    assert np.bincount(splits.val.labels, minlength=10).tolist() == [0] + [3] * 9
    assert np.bincount(splits.test.labels).tolist() == [3] * 10
    assert splits.train_counts[0] == 300


def test_group_reference_ir_fixes_d_groups_from_that_ratio(cifar10_root):
    splits = build_splits(DatasetConfig(name="cifar10_lt", root=str(cifar10_root), imbalance_ratio=10,
                                        group_reference_ir=100), RUNTIME)
    assert splits.group_rule == "reference_ir=100"
    assert splits.group_counts.tolist() == longtail_counts(300, 10, 100).tolist()
    assert not np.array_equal(splits.group_counts, splits.train_counts)


def test_cifar100_reads_fine_labels_and_names(tmp_path):
    splits = build_splits(DatasetConfig(name="cifar100_lt", root=str(write_cifar100(tmp_path)),
                                        imbalance_ratio=5, val_per_class=5), RUNTIME)
    assert len(splits.class_names) == 100 and splits.class_names[7] == "f7"
    assert splits.train_counts[0] == 30 and splits.train_counts[-1] == 6  # int(30 / 5) = 6
    assert len(splits.test) == 500


def test_cifar_root_defaults_to_ltbias_data_env(tmp_path, monkeypatch):
    write_cifar100(tmp_path / "cifar100_lt")
    monkeypatch.setenv("LTBIAS_DATA", str(tmp_path))
    splits = build_splits(DatasetConfig(name="cifar100_lt", val_per_class=5), RUNTIME)
    assert splits.meta["source"] == str(tmp_path / "cifar100_lt" / "cifar-100-python")


def test_cifar_missing_folder_error_names_the_path_and_the_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py") as e:
        build_splits(DatasetConfig(name="cifar10_lt", root=str(tmp_path / "nowhere")), RUNTIME)
    assert str(tmp_path / "nowhere") in str(e.value) and "cifar-10-python.tar.gz" in str(e.value)


def test_cifar_missing_batch_file_is_named(tmp_path):
    root = write_cifar10(tmp_path, per_class=20, test_per_class=2)
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        build_splits(DatasetConfig(name="cifar10_lt", root=str(root), val_per_class=2), RUNTIME)


def test_cifar_malformed_batch_error_names_the_file(tmp_path):
    root = write_cifar10(tmp_path, per_class=20, test_per_class=2)
    _dump(root / "cifar-10-batches-py" / "test_batch", {"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4})
    with pytest.raises(ValueError, match=r"test_batch: 'data' is uint8 \(4, 100\)"):
        build_splits(DatasetConfig(name="cifar10_lt", root=str(root), val_per_class=2), RUNTIME)
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="test_batch is not a readable CIFAR pickle"):
        build_splits(DatasetConfig(name="cifar10_lt", root=str(root), val_per_class=2), RUNTIME)


def test_unknown_dataset_name_suggests_the_closest(tmp_path):
    with pytest.raises(KeyError, match="did you mean 'cifar10_lt'"):
        build_splits(DatasetConfig(name="cifar10lt"), RUNTIME)


def test_lazy_builder_import_failure_names_the_module(monkeypatch):
    import trainables.data as data
    monkeypatch.setitem(data._LAZY_BUILDERS, "fake_lt", "trainables.no_such_module")
    with pytest.raises(ImportError, match="trainables.no_such_module"):
        build_splits(DatasetConfig(name="fake_lt"), RUNTIME)


# ---------------------------------------------------------------------------------------------
# split files (OLTR format)

def _write_image(path: Path, color: tuple[int, int, int], size: tuple[int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, color)
    (img.convert(mode) if mode != "RGB" else img).save(path)


@pytest.fixture
def txt_root(tmp_path) -> Path:
    """3 classes; train 3/2/1 images, val and test 1 per class; PNG, JPEG and a grayscale PNG."""
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    lines = {"train": [], "val": [], "test": []}
    for split, per_class in (("train", [3, 2, 1]), ("val", [1, 1, 1]), ("test", [1, 1, 1])):
        for c, n in enumerate(per_class):
            for k in range(n):
                ext = "jpg" if (split == "train" and k == 1) else "png"
                rel = f"{split}/class {c}/img_{k}.{ext}"  # a space in the path, as real data sets have
                _write_image(tmp_path / rel, colors[c], (12 + k, 10))
                lines[split].append(f"{rel} {c}")
    for split, ls in lines.items():
        (tmp_path / f"{split}.txt").write_text("\n".join(ls) + "\n")
    (tmp_path / "names.txt").write_text("red\ngreen\nblue\n")
    return tmp_path


def test_txt_split_loads_images_labels_and_class_names(txt_root):
    splits = build_splits(DatasetConfig(name="txt_split", root=str(txt_root), classnames="names.txt"), RUNTIME)
    assert splits.class_names == ["red", "green", "blue"]
    assert splits.train_counts.tolist() == [3, 2, 1] and splits.group_rule == "train_counts"
    img, label = splits.test[2]
    assert img.dtype == torch.uint8 and img.shape == (3, 10, 12) and label == 2
    assert img[:, 0, 0].tolist() == [0, 0, 255]  # PNG is lossless: exact RGB, channels first
    jpeg, _ = splits.train[1]
    assert jpeg.shape == (3, 10, 13) and jpeg[0].float().mean() > 200  # red survives JPEG


def test_txt_split_converts_grayscale_to_three_channels(txt_root):
    _write_image(txt_root / "test/class 0/img_0.png", (200, 200, 200), (8, 8), mode="L")
    splits = build_splits(DatasetConfig(name="txt_split", root=str(txt_root)), RUNTIME)
    img, _ = splits.test[0]
    assert img.shape == (3, 8, 8) and img[:, 0, 0].tolist() == [200, 200, 200]


def test_txt_split_default_class_names(txt_root):
    splits = build_splits(DatasetConfig(name="txt_split", root=str(txt_root)), RUNTIME)
    assert splits.class_names == ["class_0", "class_1", "class_2"]


def test_txt_split_malformed_line_names_file_and_line(txt_root):
    (txt_root / "val.txt").write_text("val/class 0/img_0.png 0\n\nval/class 1/img_0.png one\n")
    with pytest.raises(ValueError, match=r"val.txt, line 3: expected"):
        build_splits(DatasetConfig(name="txt_split", root=str(txt_root)), RUNTIME)


def test_txt_split_missing_image_names_the_file(txt_root):
    (txt_root / "test/class 1/img_0.png").unlink()
    splits = build_splits(DatasetConfig(name="txt_split", root=str(txt_root)), RUNTIME)
    with pytest.raises(FileNotFoundError, match=r"test/class 1/img_0.png not found \(listed in .*test.txt, line 2\)"):
        splits.test[1]


def test_txt_split_corrupt_image_names_the_file(txt_root):
    (txt_root / "val/class 0/img_0.png").write_bytes(b"\x89PNG garbage")
    splits = build_splits(DatasetConfig(name="txt_split", root=str(txt_root)), RUNTIME)
    with pytest.raises(ValueError, match=r"val/class 0/img_0.png .*cannot be decoded"):
        splits.val[0]


def test_txt_split_label_beyond_class_names_is_an_error(txt_root):
    (txt_root / "names.txt").write_text("red\ngreen\n")
    with pytest.raises(ValueError, match="label 2 but .*names.txt \\(2 names\\)"):
        build_splits(DatasetConfig(name="txt_split", root=str(txt_root), classnames="names.txt"), RUNTIME)


def test_benchmark_default_split_file_names(txt_root):
    for split in ("train", "val", "test"):
        (txt_root / f"{split}.txt").rename(txt_root / f"ImageNet_LT_{split}.txt")
    splits = build_splits(DatasetConfig(name="imagenet_lt", root=str(txt_root), limit_per_class=1), RUNTIME)
    # the shipped 1000 ImageNet-LT names: classes 3..999 have no image in these files
    assert splits.train_counts.tolist() == [3, 2, 1] + [0] * 997 and len(splits.val) == 3
    assert splits.meta["split_files"]["test"].endswith("ImageNet_LT_test.txt")


def test_inat2018_refuses_a_validation_split_that_is_the_test_split(txt_root):
    (txt_root / "train.txt").rename(txt_root / "iNaturalist18_train.txt")
    (txt_root / "val.txt").rename(txt_root / "iNaturalist18_val.txt")
    with pytest.raises(ValueError, match="also the test split; set dataset.val_split"):
        build_splits(DatasetConfig(name="inat2018", root=str(txt_root)), RUNTIME)
    held_out = txt_root / "held_out.txt"
    held_out.write_text((txt_root / "iNaturalist18_val.txt").read_text())
    splits = build_splits(DatasetConfig(name="inat2018", root=str(txt_root), val_split="held_out.txt"), RUNTIME)
    assert len(splits.test) == 3 and splits.meta["split_files"]["val"].endswith("held_out.txt")


def test_txt_split_missing_split_file_names_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"'train.txt' not found; looked in: {tmp_path}"):
        build_splits(DatasetConfig(name="txt_split", root=str(tmp_path)), RUNTIME)
