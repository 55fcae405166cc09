"""Per-trial checks the trial-config models cannot make alone: names missing from the registries
(datasets, methods, weighting rules) and settings a trial could not run with (a backdoor over more
strata than the pool has, placeholder class names read through a text tower, ...). ``trial_problems``
returns them as (trial path, value, message); the grid and search checks place them in the study.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from platform.dotpath import PathTuple, get_path
from platform.errors import did_you_mean


# --------------------------------------------------------------------------------------------
# Registries and cross-field checks the trial-config models cannot see.
# --------------------------------------------------------------------------------------------

def method_kind(name: str) -> str:
    """'train', 'posthoc' or 'ensemble': the kind of a registered method (KeyError if unknown)."""
    from trainables.methods import METHODS  # may import torch: only after cheap checks passed
    return METHODS.get(name).kind


def _method_names() -> list[str]:
    from trainables.methods import METHODS
    return METHODS.names()


def trial_problems(trial: dict) -> list[tuple[PathTuple, Any, str]]:
    """(trial path, value, message) for names missing from the registries and settings the
    trial could not run with (a backdoor over more strata than the pool has, ...)."""
    from trainables.data import dataset_names

    problems: list[tuple[PathTuple, Any, str]] = []
    datasets = dataset_names()
    if trial["dataset"]["name"] not in datasets:
        name = trial["dataset"]["name"]
        problems.append((("dataset", "name"), name, f"unknown dataset{did_you_mean(name, datasets)} "
                                                    f"(known: {', '.join(datasets)})"))
    methods = _method_names()
    kinds: dict[PathTuple, str] = {}
    for path in (("method", "name"), ("method", "base_method"), ("backdoor", "stratum_method", "name")):
        try:
            name = get_path(trial, path)
        except KeyError:  # base_method: only the post-hoc methods' configs have it
            continue
        if name not in methods:
            problems.append((path, name, f"unknown method{did_you_mean(name, methods)} "
                                         f"(known: {', '.join(methods)})"))
        else:
            kinds[path] = method_kind(name)
    for path in (("method", "base_method"), ("backdoor", "stratum_method", "name")):
        if kinds.get(path) not in (None, "train"):
            problems.append((path, get_path(trial, path),
                             f"must be a training method (kind 'train'), not a {kinds[path]!r} one"))
    if kinds.get(("method", "name")) == "ensemble":
        problems += _backdoor_problems(trial)
        problems += _weighting_problems(trial)
        problems += _baseline_problems(trial, methods)
    problems += _class_name_problems(trial, kinds)
    root = trial["dataset"]["root"]
    if root and not Path(root).expanduser().is_dir():
        problems.append((("dataset", "root"), root, "no such folder: give the folder holding the "
                                                    "data set's files (or leave root unset)"))
    fault = trial["runtime"]["fault"]
    if fault is not None and not re.fullmatch(r"(nan|crash)_at_epoch:\d+", fault):
        problems.append((("runtime", "fault"), fault, "must be nan_at_epoch:N or crash_at_epoch:N "
                                                      "(testing only; leave unset otherwise)"))
    return problems


def _baseline_problems(trial: dict, methods: list[str]) -> list[tuple[PathTuple, Any, str]]:
    """backdoor.baselines: single-model methods (training, or post-hoc on a training base)."""
    problems: list[tuple[PathTuple, Any, str]] = []
    for i, m in enumerate(trial["backdoor"]["baselines"]):
        path: PathTuple = ("backdoor", "baselines", i, "name")
        if m["name"] not in methods:
            problems.append((path, m["name"], f"unknown method{did_you_mean(m['name'], methods)} "
                                              f"(known: {', '.join(methods)})"))
            continue
        kind = method_kind(m["name"])
        if kind == "ensemble":
            problems.append((path, m["name"], "a baseline is a single-model method (training or "
                                              "post-hoc), not an ensemble"))
        elif kind == "posthoc" and (m["base_method"] not in methods or method_kind(m["base_method"]) != "train"):
            problems.append((("backdoor", "baselines", i, "base_method"), m["base_method"],
                             "must be a training method (kind 'train') whose logits the post-hoc baseline corrects"))
    return problems


def _weighting_problems(trial: dict) -> list[tuple[PathTuple, Any, str]]:
    """backdoor.weighting against its registry, and the aggregation space it needs."""
    from trainables.methods.weighting import WEIGHTINGS, check_space

    name, space = trial["backdoor"]["weighting"], trial["backdoor"]["aggregation"]
    if name not in WEIGHTINGS:
        known = WEIGHTINGS.names()
        return [(("backdoor", "weighting"), name, f"unknown weighting rule{did_you_mean(name, known)} "
                                                  f"(known: {', '.join(known)})")]
    try:
        check_space(name, space)
    except ValueError as e:
        return [(("backdoor", "aggregation"), space, str(e))]
    return []


def _class_name_problems(trial: dict, kinds: dict[PathTuple, str]) -> list[tuple[PathTuple, Any, str]]:
    """Placeholder class names (class_<i>) where a text tower reads them: a text-initialised head,
    or a method that needs zero-shot logits (q_hat), on an open_clip backbone."""
    from trainables.config import DatasetConfig
    from trainables.data.names import placeholder_names
    from trainables.methods import METHODS

    if not placeholder_names(DatasetConfig.model_validate(trial["dataset"])):
        return []
    ensemble = kinds.get(("method", "name")) == "ensemble"
    models = trial["pool"] if ensemble else [trial["backbone"]]
    if not any(b["family"] == "open_clip" for b in models):
        return []
    needs = []
    if trial["finetune"]["head"] == "text":
        needs.append("finetune.head 'text'")
    names = [("method.name", trial["method"]["name"])]
    if ensemble:
        names.append(("backdoor.stratum_method.name", trial["backdoor"]["stratum_method"]["name"]))
        if trial["backdoor"]["debias"] == "prior":
            needs.append("the backdoor's q_hat (debias prior)")
    needs += [f"{field} {name!r} (zero-shot logits)" for field, name in names
              if name in METHODS and getattr(METHODS.get(name), "needs_prior", False)]
    if not needs:
        return []
    return [(("dataset", "classnames"), None,
             f"{trial['dataset']['name']} would get placeholder class names class_0, class_1, ... and "
             f"{', '.join(needs)} reads them through the text tower; set dataset.classnames to the "
             "class-name file (one name per line, '<id> <name>' lines or iNaturalist's categories.json)")]


def _backdoor_problems(trial: dict) -> list[tuple[PathTuple, Any, str]]:
    """Checks of the backdoor section against the pool, only for cells that use it."""
    bd, pool = trial["backdoor"], len(trial["pool"])
    problems: list[tuple[PathTuple, Any, str]] = []
    if bd["strata_source"] != "pool":
        return problems
    if bd["strata"] is not None:
        bad = [i for i in bd["strata"] if not 0 <= i < pool]
        if not bd["strata"] or bad or len(set(bd["strata"])) != len(bd["strata"]):
            problems.append((("backdoor", "strata"), bd["strata"],
                             f"must be distinct indices into the pool of {pool} backbone(s): "
                             f"a non-empty subset of 0..{pool - 1}"))
    elif bd["confounders"] > pool:
        problems.append((("backdoor", "confounders"), bd["confounders"],
                         f"must be <= {pool}, the number of backbones in the pool (or add backbones)"))
    if bd["weights"] is not None and (len(bd["weights"]) != pool or min(bd["weights"]) < 0):
        problems.append((("backdoor", "weights"), bd["weights"],
                         f"must be {pool} non-negative weights, one per pool member"))
    return problems
