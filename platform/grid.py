"""Grid expansion and the checks on the expanded study: ``expand_grid`` builds every cell (the full
cross product of the grid axes) and validates its trial config, reporting each problem once with
the cells it occurs in; ``searched`` and ``_check_search`` check the search space per searched
cell; ``check_study_size`` caps the number of planned trials before the grid is expanded;
``_check_published`` checks the published numbers against the cells.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pydantic import ValidationError

from platform import paths
from platform.checks import trial_problems
from platform.dotpath import (PathTuple, Segment, _matches, get_path, join_path, resolve_path, set_path,
                              setting_order, split_path)
from platform.errors import Issue, SpecError, show_value
from platform.space import condition, grid_size, representative_values
from platform.spec import GRID_ROOTS, SEARCH_ROOTS, Study, TrialSections
from platform.yamlsource import MAX_STUDY_TRIALS, Source, pydantic_issues
from trainables.config import TrialConfig


# --------------------------------------------------------------------------------------------
# Grid expansion: every cell validated as a TrialConfig.
# --------------------------------------------------------------------------------------------

@dataclass
class GridPoint:
    """One cell of the grid before planning: its axis values and validated trial config."""

    index: int
    id: str
    label: str
    values: dict[str, Any]
    indices: tuple[int, ...]  # the value index on each axis
    sections: dict  # the study's trial sections after applying the values (study paths)
    trial: dict     # TrialConfig.model_dump(mode="json")


def cell_ids(n: int) -> list[str]:
    """'c00'..'cNN' (at least two digits, more when needed)."""
    width = max(2, len(str(max(n - 1, 0))))
    return [f"c{i:0{width}d}" for i in range(n)]


def cell_label(values: dict[str, Any]) -> str:
    """'dataset.imbalance_ratio=10 method.name=la' ('(base)' for a study without a grid)."""
    return " ".join(f"{k}={show_value(v)}" for k, v in values.items()) or "(base)"


def _runtime(study: Study) -> dict:
    """The trial runtime: cache and zoo under a local storage unless set; paths made absolute
    because Ray runs trials in their own working directories."""
    rt = study.runtime.model_dump(mode="json")
    local = study.storage is not None and paths.is_local(study.storage)
    defaults = {"cache_dir": paths.stage1_cache_dir, "zoo_dir": paths.zoo_dir}
    for key, default in defaults.items():
        if key not in study.runtime.model_fields_set and local:
            rt[key] = str(default(study.storage))
        else:
            rt[key] = str(Path(rt[key]).expanduser().resolve())
    if rt["data_root"]:
        rt["data_root"] = str(Path(rt["data_root"]).expanduser().resolve())
    return rt


def trial_config(sections: dict, study: Study) -> dict:
    """The TrialConfig dict of a cell from its (study-path) sections."""
    backbones = sections["backbones"]
    return {
        "dataset": sections["dataset"],
        "backbone": backbones[sections["backbone_index"]],
        "pool": backbones,
        "finetune": sections["finetune"],
        "method": sections["method"],
        "backdoor": sections["backdoor"],
        "seed": study.replicates()[0].finetune,
        "replicates": [r.model_dump() for r in study.replicates()],
        "runtime": _runtime(study),
    }


def _to_study_path(trial_path: Sequence[Segment], backbone_index: int) -> PathTuple:
    """The study path a trial path comes from (backbone -> backbones.<index>, pool -> backbones)."""
    head, rest = trial_path[0] if trial_path else "", tuple(trial_path[1:])
    if head == "backbone":
        return ("backbones", backbone_index) + rest
    if head == "pool":
        return ("backbones",) + rest
    if head in ("seed", "replicates"):
        return ("seeds",)
    return tuple(trial_path)


def expand_grid(study: Study) -> list[GridPoint]:
    """Every grid cell (full cross product, axes in file order), each validated; SpecError lists
    each problem once, naming the cells it occurs in."""
    source = study.source or Source(file="<study>")
    base = study.model_dump(mode="json", include=set(GRID_ROOTS))
    # Each axis: its name, its value labels, and per value the (study path, value) it sets. A plain
    # axis sets its own path; a bundle axis {label: {path: value}} sets each label's paths.
    axes: list[tuple[str, list[Any]]] = []
    settings: list[list[list[tuple[list[Segment], Any]]]] = []
    resolved: list[list[list[Segment]]] = []  # per axis, the study paths it sets
    issues: list[Issue] = []
    for axis, values in study.grid.items():
        if not values:
            issues.append(source.issue(("grid", axis), "an axis needs at least one value", values))
            continue
        bundle = isinstance(values, dict)
        per_value = list(values.values()) if bundle else [{axis: v} for v in values]
        paths: dict[str, list[Segment]] = {}
        ok = True
        for j, assignment in enumerate(per_value):
            for path in assignment:
                if path in paths:
                    continue
                try:
                    paths[path], _ = resolve_path(TrialSections, split_path(path), roots=GRID_ROOTS)
                except ValueError as e:
                    where = ("grid", axis, list(values)[j], path) if bundle else ("grid", axis)
                    issues.append(source.issue(where, f"not a study path: {e}", has_value=False))
                    ok = False
        if not ok:
            continue
        try:  # indices must exist in the study (a '*' or a field creates nothing new)
            for path, value in per_value[0].items():
                set_path(copy.deepcopy(base), paths[path], value)
        except KeyError as e:
            issues.append(source.issue(("grid", axis), f"cannot be applied: {e.args[0]}",
                                       has_value=False))
            continue
        axes.append((axis, list(values)))
        settings.append([[(paths[p], v) for p, v in a.items()] for a in per_value])
        resolved.append(list(paths.values()))
    if issues:
        raise SpecError(issues, source.file)

    combos = list(itertools.product(*(range(len(v)) for _, v in axes)))
    ids = cell_ids(len(combos))
    found: dict[str, tuple[Issue, list[GridPoint]]] = {}
    points: list[GridPoint] = []
    for index, combo in enumerate(combos):
        values = {axis: vals[j] for (axis, vals), j in zip(axes, combo)}
        label = cell_label(values)
        cell = GridPoint(index, ids[index], label, values, combo, {}, {})

        def axis_of(study_path: Sequence[Segment]) -> tuple[PathTuple, Any] | None:
            """The grid value node responsible for a study path (last matching axis wins)."""
            for k in reversed(range(len(axes))):
                if any(_matches(r, study_path) for r in resolved[k]):
                    return ("grid", axes[k][0], combo[k]), axes[k][1][combo[k]]
            return None

        def record(path: PathTuple, value: Any, message: str, has_value: bool = True) -> None:
            hit = axis_of(path)
            line_path = hit[0] if hit else path
            issue = source.issue(path, message, value, has_value=has_value, line_path=line_path)
            if hit:
                issue = Issue(issue.path, issue.message, issue.value, issue.line, issue.origin,
                              f"grid axis {hit[0][1]} = {show_value(hit[1])}")
            found.setdefault(issue.format(source.file), (issue, []))[1].append(cell)

        doc = copy.deepcopy(base)
        assignments = [(k, segments, value) for k in range(len(axes))
                       for segments, value in settings[k][combo[k]]]
        try:  # method names first: the result does not depend on the order of the axes
            for k, segments, value in setting_order(assignments, lambda a: a[1]):
                set_path(doc, segments, value)
        except KeyError as e:
            record(("grid", axes[k][0]), None, f"cannot be applied: {e.args[0]}", has_value=False)
            continue
        try:
            sections = TrialSections.model_validate(doc).model_dump(mode="json")
        except ValidationError as err:
            for iss in pydantic_issues(err, TrialSections, source):
                record(tuple(split_path(iss.path)) if iss.path else (), iss.value, iss.message,
                       has_value=iss.value is not None or "required" not in iss.message)
            continue
        bi = sections["backbone_index"]
        if bi >= len(sections["backbones"]):
            record(("backbone_index",), bi, f"must be < {len(sections['backbones'])}, the number "
                                            "of backbones (an index into backbones)")
            continue
        trial = trial_config(sections, study)
        try:
            trial = TrialConfig.model_validate(trial).model_dump(mode="json")
        except ValidationError as err:
            for e in err.errors(include_url=False):
                record(_to_study_path(e["loc"], bi), e["input"], e["msg"])
            continue
        for path, value, message in trial_problems(trial):
            record(_to_study_path(path, bi), value, message)
        points.append(GridPoint(index, ids[index], label, values, combo, sections, trial))
    if found:
        raise SpecError([_with_cells(issue, cells, len(combos)) for issue, cells in found.values()],
                        source.file)
    _check_duplicates(points, axes, source)
    return points


def _with_cells(issue: Issue, cells: list[GridPoint], total: int) -> Issue:
    """The issue with the cells it occurs in added to its context."""
    if total == 1 and cells[0].label == cell_label({}):
        return issue  # a study without a grid: the cell adds nothing
    if len(cells) == 1:
        where = f"in cell {cells[0].id} \"{cells[0].label}\""
    elif len(cells) == total:
        where = f"in every cell ({total})"
    else:
        where = "in cells " + ", ".join(c.id for c in cells)
    context = f"{issue.context}, {where}" if issue.context else where
    return Issue(issue.path, issue.message, issue.value, issue.line, issue.origin, context)


def _check_duplicates(points: list[GridPoint], axes: list[tuple[str, list[Any]]],
                      source: Source) -> None:
    """Two cells with the same trial config would run (and count) the same trials twice."""
    first: dict[str, GridPoint] = {}
    issues: list[Issue] = []
    for p in points:
        key = json.dumps(p.trial, sort_keys=True)
        if key not in first:
            first[key] = p
            continue
        q = first[key]
        diff = [k for k in range(len(axes)) if p.indices[k] != q.indices[k]]
        k = diff[-1]  # distinct grid points differ on at least one axis
        axis, j = axes[k][0], p.indices[k]
        issues.append(source.issue(
            ("grid", axis), f"value {show_value(p.values[axis])} gives the same trial config as "
                            f"{show_value(q.values[axis])} (cells {q.id} \"{q.label}\" and {p.id} "
                            f"\"{p.label}\" are identical); remove the repeat", p.values[axis],
            line_path=("grid", axis, j)))
        if len(issues) >= 3:
            break
    if issues:
        raise SpecError(issues, source.file)


# --------------------------------------------------------------------------------------------
# The search space, checked per searched cell.
# --------------------------------------------------------------------------------------------

def searched(study: Study, point: GridPoint) -> bool:
    """True when ``search.where`` (study paths -> allowed values) admits this cell."""
    if not study.search.space:
        return False
    for path, allowed in (study.search.where or {}).items():
        if isinstance(study.grid.get(path), dict):  # a bundle axis: its labels
            value = point.values.get(path)
        else:
            try:
                value = get_path(point.sections, resolve_path(TrialSections, split_path(path))[0])
            except (KeyError, ValueError):
                return False
        if value not in allowed:
            return False
    return True


def _check_search(study: Study, points: list[GridPoint]) -> None:
    """Space and where paths exist; sampled extremes give valid trials; no grid/search overlap."""
    source = study.source or Source(file="<study>")
    issues: list[Issue] = []
    space: dict[str, list[Segment]] = {}
    for path in study.search.space:
        try:
            space[path], _ = resolve_path(TrialConfig, split_path(path), roots=SEARCH_ROOTS)
        except ValueError as e:
            issues.append(source.issue(("search", "space", path), f"not a trial path: {e}",
                                       has_value=False))
    for path, allowed in (study.search.where or {}).items():
        try:
            if not isinstance(study.grid.get(path), dict):
                resolve_path(TrialSections, split_path(path), roots=GRID_ROOTS)
        except ValueError as e:
            issues.append(source.issue(("search", "where", path), f"not a study path: {e}",
                                       has_value=False))
        if not allowed:
            issues.append(source.issue(("search", "where", path), "needs at least one value", allowed))
    order = list(study.search.space)
    for path, dist in study.search.space.items():
        for cond in condition(dist):
            if cond in study.search.space:
                if order.index(cond) >= order.index(path):
                    issues.append(source.issue(("search", "space", path, "when"), f"{cond!r} is searched "
                                               f"after {path!r}: list the parameter a condition reads first",
                                               has_value=False))
                continue
            try:
                resolve_path(TrialConfig, split_path(cond), roots=SEARCH_ROOTS)
            except ValueError as e:
                issues.append(source.issue(("search", "space", path, "when"), f"{cond!r} is not a trial "
                                           f"path: {e}", has_value=False))
        if study.search.algorithm == "grid" and condition(dist):
            issues.append(source.issue(("search", "space", path, "when"), "algorithm grid enumerates "
                                       "every combination, so a condition cannot skip a parameter; use "
                                       "optuna or random, or sweep the condition as a grid axis",
                                       has_value=False))
    swept = [(axis, p) for axis, values in study.grid.items()
             for p in (sorted({q for b in values.values() for q in b}) if isinstance(values, dict) else [axis])]
    for path, segments in space.items():
        for axis, swept_path in swept:
            a = split_path(swept_path)
            if a[0] in SEARCH_ROOTS and (_matches(a, segments) or _matches(segments, a)):
                issues.append(source.issue(("search", "space", path), f"is also the grid axis {axis!r}: "
                                           "a parameter is either swept or searched", has_value=False))
    if study.search.algorithm == "grid":
        for path, dist in study.search.space.items():
            if "categorical" not in dist:
                issues.append(source.issue(("search", "space", path), "algorithm grid needs "
                                           "{categorical: [...]} distributions", dist))
        size = math.prod(len(d.get("categorical", ())) for d in study.search.space.values())
        if study.search.space and study.search.num_samples not in (None, size):
            issues.append(source.issue(("search", "num_samples"), f"algorithm grid tries all {size} "
                                       "combinations of the space; remove num_samples or set it "
                                       f"to {size}", study.search.num_samples))
    if issues:
        raise SpecError(issues, source.file)
    chosen = [p for p in points if searched(study, p)]
    if study.search.space and study.search.where and not chosen:
        raise SpecError([source.issue(("search", "where"), "matches no cell: nothing would be "
                                      "searched (check the values against the grid)",
                                      study.search.where)], source.file)
    found: dict[str, tuple[Issue, list[GridPoint]]] = {}
    for point in chosen:
        for path, segments in space.items():
            for value in representative_values(study.search.space[path]):
                trial = copy.deepcopy(point.trial)
                try:
                    set_path(trial, segments, value)
                    trial = TrialConfig.model_validate(trial).model_dump(mode="json")
                    problems = [m for p, _, m in trial_problems(trial) if _matches(segments, p)
                                or _matches(p, segments)]
                except KeyError as e:
                    problems = [f"cannot be set: {e.args[0]}"]
                except ValidationError as err:
                    problems = [f"{join_path(e['loc'])}: {e['msg']}" for e in err.errors(include_url=False)]
                for message in problems:
                    issue = source.issue(("search", "space", path),
                                         f"the value {show_value(value)} it can take is invalid: {message}",
                                         study.search.space[path])
                    found.setdefault(issue.format(source.file), (issue, []))[1].append(point)
    if found:
        raise SpecError([_with_cells(i, c, len(chosen)) for i, c in found.values()], source.file)


def check_study_size(study: "Study", source: "Source") -> None:
    """Refuse a study planning more than MAX_STUDY_TRIALS trials, counted without expanding the
    grid: cells (product of the grid's list lengths) x seeds x configurations per cell."""
    cells = math.prod(len(v) for v in study.grid.values()) if study.grid else 1
    samples = 1
    if study.search.space:
        samples = study.search.num_samples or 10
        if study.search.algorithm == "grid" and not study.search.num_samples:
            try:
                samples = grid_size(study.search.space)
            except ValueError:  # reported by _check_search, with the field
                samples = 1
    axes = study.seed_axes()
    replicates = len(axes.world) * len(axes.pretrain) * len(axes.finetune)
    trials = cells * replicates * samples
    if trials > MAX_STUDY_TRIALS:
        raise SpecError([source.issue(("grid",) if study.grid else (), (
            f"the study would plan about {trials:,} trials ({cells:,} cells x {replicates:,} "
            f"replicates x {samples:,} configurations); at most {MAX_STUDY_TRIALS:,} are allowed "
            "(MAX_STUDY_TRIALS): shrink the grid, the seeds or search.num_samples"),
            has_value=False)], source.file)


def _check_published(study: Study) -> None:
    """Every published entry names a method and grid values some cell has."""
    source = study.source or Source(file="<study>")
    issues: list[Issue] = []
    for i, entry in enumerate(study.published):
        methods = set(study.grid.get("method.name", [study.method.name]))
        if entry.method not in methods:
            issues.append(source.issue(("published", i, "method"), "no cell runs this method (cells run "
                                       f"{', '.join(map(str, sorted(methods)))})", entry.method))
        for axis, value in entry.where.items():
            if axis not in study.grid or value not in study.grid[axis]:
                issues.append(source.issue(("published", i, "where", axis), "must be a grid axis and one of "
                                           "its values, so that the number has cells to stand beside", value))
    if issues:
        raise SpecError(issues, source.file)
