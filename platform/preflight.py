"""Preflight: what a study's trials will load, checked before any trial starts (and at --dry-run).

A study can validate and still fail in every trial: a model name or pretrained tag its library does
not know, a checkpoint file that is not there, a data root without the data set. ``preflight(plan)``
finds all of these at once, in seconds, and raises ``SpecError`` naming each field and the fix (the
CLI exits 2). It checks, for every backbone a trial of the plan builds,
- open_clip: the model name against ``open_clip.list_models()`` and the tag against the tags open_clip
  lists for that model (``list_pretrained_tags_by_model``);
- timm: the model name against ``timm.list_models()``;
- a checkpoint file: present (as given, or under runtime.zoo_dir);
and, unless ``check_data=False`` (the CLI's ``--skip-data-check``, to plan a study on a machine
without the data), for every data set:
- CIFAR: the pickle folder with all its files, the meta pickle readable;
- split-file data sets: the split files, each parsed, a sample of their image paths present, and the
  class-name file when one is set.
It downloads nothing and opens no image or weight file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from platform.errors import Issue, SpecError
from platform.plan import Plan
from platform.yamlsource import Source

IMAGE_SAMPLE = 16  # image paths checked per split file (evenly spaced)


def preflight(plan: Plan, check_data: bool = True) -> None:
    """Raise SpecError listing every problem of the plan's backbones and (optionally) data."""
    study = plan.study
    source = study.source or Source(file=plan.study_path)
    trials = [c.base_config for c in plan.cells] + list(plan.prerequisites)
    issues: list[Issue] = []
    seen: set[str] = set()
    for trial in trials:
        for backbone in [trial["backbone"], *trial["pool"]]:
            key = json.dumps([backbone, trial["runtime"]["zoo_dir"]], sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            path = _backbone_path(study.backbones, backbone)
            for field, value, message in backbone_problems(backbone, trial["runtime"]):
                issues.append(_issue(source, (*path, field), value, message))
    if check_data:
        seen.clear()
        for trial in trials:
            key = json.dumps([trial["dataset"], trial["runtime"]["data_root"]], sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            for field, value, message in data_problems(trial["dataset"], trial["runtime"]):
                issues.append(_issue(source, ("dataset", field), value, message))
    unique = list({i.format(source.file): i for i in issues}.values())
    if unique:
        raise SpecError(unique, source.file, header="preflight: what the trials would load is not there "
                                                    "(--skip-data-check skips the data part)")


def _issue(source: Source, path: tuple, value: Any, message: str) -> Issue:
    return source.issue(path, message, value)


def _backbone_path(backbones: Iterable[Any], backbone: dict) -> tuple:
    """('backbones', i) of the study's pool member equal to ``backbone`` (or the first with its name)."""
    dumped = [b.model_dump(mode="json") for b in backbones]
    for i, b in enumerate(dumped):
        if b == backbone:
            return ("backbones", i)
    for i, b in enumerate(dumped):
        if (b["family"], b["name"]) == (backbone["family"], backbone["name"]):
            return ("backbones", i)
    return ("backbones",)


# --------------------------------------------------------------------------------------------
# Backbones


def backbone_problems(backbone: dict, runtime: dict) -> list[tuple[str, Any, str]]:
    """(field, value, message) for a backbone config dict that its family cannot build."""
    problems: list[tuple[str, Any, str]] = []
    family, name, tag, ckpt = backbone["family"], backbone["name"], backbone["pretrained"], backbone["checkpoint"]
    if ckpt is not None and not any(Path(p).expanduser().is_file()
                                    for p in (ckpt, Path(runtime["zoo_dir"]) / ckpt)):
        problems.append(("checkpoint", ckpt, f"no such file (also looked in runtime.zoo_dir "
                                             f"{runtime['zoo_dir']}); give the path of the weights file "
                                             "or remove checkpoint"))
    if family == "open_clip":
        problems += _open_clip_problems(name, tag, ckpt)
    elif family == "timm":
        problems += _timm_problems(name)
    return problems


def _open_clip_problems(name: str, tag: str | None, ckpt: str | None) -> list[tuple[str, Any, str]]:
    import open_clip

    from platform.errors import did_you_mean

    models = open_clip.list_models()
    if name not in models:
        return [("name", name, f"open_clip has no model of this name{did_you_mean(name, models)} "
                               "(open_clip.list_models() lists them)")]
    if tag is None or ckpt is not None:
        return []
    tags = open_clip.list_pretrained_tags_by_model(name)
    if tag.lower() not in [t.lower() for t in tags]:
        known = ", ".join(tags) if tags else "none: give checkpoint instead"
        return [("pretrained", tag, f"open_clip has no pretrained tag {tag!r} for model {name!r}"
                                    f"{did_you_mean(tag, tags)} (its tags: {known})")]
    return []


def _timm_problems(name: str) -> list[tuple[str, Any, str]]:
    import timm

    from platform.errors import did_you_mean

    if timm.is_model(name):
        return []
    return [("name", name, f"timm has no model of this name{did_you_mean(name, timm.list_models())} "
                           "(timm.list_models() lists them)")]


# --------------------------------------------------------------------------------------------
# Data


def data_problems(dataset: dict, runtime: dict) -> list[tuple[str, Any, str]]:
    """(field, value, message) for a data set whose files are not where the config says."""
    from trainables.config import DatasetConfig, RuntimeConfig
    from trainables.data import candidate_roots
    from trainables.data.cifar import CIFAR10, CIFAR100, locate_folder, read_class_names
    from trainables.data.txt_split import LAYOUTS

    cfg, rt = DatasetConfig.model_validate(dataset), RuntimeConfig.model_validate(runtime)
    if cfg.name in ("cifar10_lt", "cifar100_lt"):
        fmt = CIFAR10 if cfg.name == "cifar10_lt" else CIFAR100
        try:
            folder = locate_folder(fmt, candidate_roots(cfg, rt))
            read_class_names(folder / fmt.meta_file, fmt.names_key, fmt.num_classes)
        except (FileNotFoundError, ValueError) as e:
            return [("root", cfg.root, str(e))]
        return []
    if cfg.name in LAYOUTS:
        return _split_file_problems(cfg, rt)
    return []  # toy_lt: generated, nothing to find


def _split_file_problems(cfg, rt) -> list[tuple[str, Any, str]]:
    from trainables.data import candidate_roots
    from trainables.data.txt_split import LAYOUTS, read_split_file

    layout = LAYOUTS[cfg.name]
    files = {"train": cfg.train_split or layout.train, "val": cfg.val_split or layout.val,
             "test": cfg.test_split or layout.test}
    roots = candidate_roots(cfg, rt)
    root = next((r for r in roots if _resolve(r, files["train"]).is_file()), None)
    if root is None:
        where = ", ".join(str(r) for r in roots) or "no folder: set dataset.root, $LTBIAS_DATA or runtime.data_root"
        return [("root", cfg.root, f"{cfg.name}: train split file {files['train']!r} not found (looked in: "
                                   f"{where}); point dataset.root at the folder holding the images and "
                                   "the split files")]
    problems: list[tuple[str, Any, str]] = []
    for split, name in files.items():
        path = _resolve(root, name)
        field = f"{split}_split"
        if not path.is_file():
            problems.append((field, getattr(cfg, field), f"split file {path} not found; set dataset.{field}"))
            continue
        try:
            lines = read_split_file(path)
        except ValueError as e:
            problems.append((field, getattr(cfg, field), str(e)))
            continue
        if not lines.paths:
            problems.append((field, getattr(cfg, field), f"split file {path} lists no image"))
            continue
        step = max(1, len(lines.paths) // IMAGE_SAMPLE)
        missing = [p for p in lines.paths[::step][:IMAGE_SAMPLE] if not (root / p).is_file()]
        if missing:
            problems.append(("root", str(root), f"{len(missing)} of {min(IMAGE_SAMPLE, len(lines.paths))} "
                                                f"sampled images of {path.name} are missing under the root, "
                                                f"e.g. {root / missing[0]}; point dataset.root at the "
                                                "folder the split file's paths are relative to"))
    if cfg.classnames and not _resolve(root, cfg.classnames).is_file():
        problems.append(("classnames", cfg.classnames, f"no such file (relative paths are under {root}); "
                                                       "give the class-name file or leave it unset"))
    return problems


def _resolve(root: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else root / path


__all__ = ["backbone_problems", "data_problems", "preflight"]
