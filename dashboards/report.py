"""The study report: one self-contained HTML file (inline CSS, JS, SVG; no network) from MLflow.

Every chart is a ``<figure class="chart" data-chart=ID data-points=N>``; N counts the data marks
drawn (``.pt`` elements in its SVG). A chart without data shows ``<p class="empty-state">`` and
``data-points="0"``, never a blank plot.
"""

from __future__ import annotations

import datetime as _dt
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import jinja2
import pandas as pd
from mlflow import MlflowClient

from dashboards import charts
from dashboards.cells import CellSearch, analyse_cell
from dashboards.charts import Axis, Chart, Series, Stat
from dashboards.data import PARAM_PREFIX, StudyData, experiment_url, run_url
from trainables.contract import Tag
from trainables.registry import Registry
from dashboards.summary import (BACKDOOR, CONFOUNDERS, EFFECTIVE_M, GROUPS, IMBALANCE, METHOD, PERCENT,
                                WEIGHTING, axis_name, grid_axes, searched_params, select,
                                series_label, usable)

DEFAULT_UI_URL = "http://127.0.0.1:5000"
REPORT_ARTIFACT_DIR = "report"
REPORT_FILE = "report.html"
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
#: Columns of the trial table, after run, cell, seed, status and the searched parameters.
TABLE_METRICS = ["val/acc", "test/acc", "test/bal_acc", "test/d_few", "test/p_few", "test/worst_class_acc"]


@dataclass
class Figure:
    """One chart slot of the report: a chart, or the reason it has none."""

    id: str
    title: str
    caption: str
    chart: Chart | None
    empty: str = "No data for this chart."

    @property
    def points(self) -> int:
        """Data marks drawn (0 for an empty chart)."""
        return self.chart.points if self.chart else 0


@dataclass
class Section:
    """A headed group of figures, laid out in a row that wraps."""

    id: str
    title: str
    intro: str
    figures: list[Figure] = field(default_factory=list)


def build_report(data: StudyData, *, objective: str = "val/acc", mode: str = "max", metric: str = "test/acc",
                 ui_url: str = DEFAULT_UI_URL, optuna_storage: str | None = None) -> str:
    """The report's HTML for ``data``: configs selected on ``objective``, ``metric`` shown.

    ``optuna_storage`` is the RDB of the cells' Optuna studies; without it (or without a cell's
    study in it) importances are computed on a study rebuilt from the MLflow runs.
    """
    trials = usable(data.trials, objective)
    axes = grid_axes(data.grid_columns, trials) if not trials.empty else []
    series_axes = [a for a in axes if a != IMBALANCE]
    # Methods in legends, colours and tables: in the order the study's grid lists them.
    method_order = [str(m) for m in data.grid.get(METHOD[len(PARAM_PREFIX):], [])]
    labels = _series_labels(trials, series_axes, method_order)
    colours = charts.color_map(labels)
    storage = optuna_storage
    ir_main = _largest(trials, IMBALANCE)
    # Optuna studies are per execution: <study>/<execution>/<cell> (platform.searcher)
    optuna_prefix = "/".join(filter(None, (data.study, data.study_tags.get(Tag.EXECUTION))))
    ctx = _Context(trials, objective, mode, metric, series_axes, colours, ir_main, optuna_prefix, storage,
                   method_order)
    sections = [build(ctx) for _, build in SECTIONS.items()]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    table_params = [c for c in searched_params(trials)] if not trials.empty else []
    cells = _cell_table(ctx, data, axes, ui_url)
    return env.get_template("report.html.j2").render(cells=cells,
        data=data, sections=sections, objective=objective, mode=mode, metric=metric,
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        study_url=run_url(ui_url, data.experiment_id, data.study_run_id),
        experiment_url=experiment_url(ui_url, data.experiment_id),
        counts=_counts(data), axes=[axis_name(a) for a in axes],
        table=_trial_table(data, table_params, ui_url), optuna_storage=storage or "none")


@dataclass(frozen=True)
class _Context:
    trials: pd.DataFrame
    objective: str
    mode: str
    metric: str
    series_axes: list[str]
    colours: dict[str, str]
    ir_main: float | None
    study: str = ""
    optuna_storage: str | None = None
    method_order: list[str] = field(default_factory=list)


#: The report's sections, in page order: each a function ``(context) -> Section`` registered here.
SECTIONS: Registry[Callable[[_Context], Section]] = Registry("report section")


def _metric_label(metric: str) -> str:
    split, _, name = metric.partition("/")
    names = {"acc": "top-1 accuracy", "bal_acc": "balanced accuracy", "macro_f1": "macro F1",
             "worst_class_acc": "worst-class accuracy"}
    return f"{split} {names.get(name, name)} (%)"


def _series_labels(trials: pd.DataFrame, axes: Sequence[str], method_order: Sequence[str]) -> list[str]:
    if trials.empty:
        return []
    rows = trials.drop_duplicates(subset=list(axes) or None)[list(axes)].to_dict("records") if axes else [{}]
    rows.sort(key=lambda r: (_method_rank(r.get(METHOD), method_order), [str(r.get(a)) for a in axes]))
    return list(dict.fromkeys(series_label(r, axes) for r in rows))


def _method_rank(name: object, order: Sequence[str]) -> int:
    return list(order).index(name) if name in order else len(order)


def _largest(trials: pd.DataFrame, column: str) -> float | None:
    if trials.empty or column not in trials or trials[column].dropna().empty:
        return None
    return float(trials[column].dropna().max())


def _series_stats(ctx: _Context, frame: pd.DataFrame, x: str | None, metrics: Sequence[str],
                  extra_by: Sequence[str] = (), drop: Sequence[str] = (),
                  empty_label: str = "all trials") -> dict[str, dict[object, dict[str, Stat]]]:
    """{series label: {x value: {metric: Stat}}} from the selected configuration of each key.

    Series are the grid settings (ctx.series_axes) plus ``extra_by``, less ``x`` and ``drop``
    (axes constant in ``frame``, such as the method in the backdoor-only charts).
    """
    label_axes = [a for a in ctx.series_axes if a != x and a not in extra_by and a not in drop] + list(extra_by)
    by = label_axes + ([x] if x else [])
    out: dict[str, dict[object, dict[str, Stat]]] = {}
    for sel in select(frame, by, ctx.objective, ctx.mode):
        key = dict(zip(by, sel.key))
        label = series_label(key, label_axes, empty_label)
        xv = key[x] if x else None
        out.setdefault(label, {})[_x_value(xv)] = {m: sel.stat(m) for m in metrics}
    return out


def _x_value(value: object) -> object:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _ordered(labels: Sequence[str], ctx: _Context) -> list[str]:
    order = list(ctx.colours)
    return sorted(labels, key=lambda s: order.index(s) if s in order else len(order))


@SECTIONS.register("accuracy")
def _overview_section(ctx: _Context) -> Section:
    section = Section("accuracy", "Accuracy vs downstream imbalance",
                      f"Each point is the configuration selected on {ctx.objective} ({ctx.mode}) within its cell; "
                      f"bars and bands show ±1 standard deviation over seeds.")
    chart = None
    if not ctx.trials.empty and IMBALANCE in ctx.trials:
        stats = _series_stats(ctx, ctx.trials, IMBALANCE, [ctx.metric])
        series = [Series(label, ctx.colours.get(label, charts.PALETTE[0]),
                         {x: v[ctx.metric] for x, v in stats[label].items()}) for label in _ordered(list(stats), ctx)]
        chart = charts.line_chart(series, x_label="downstream imbalance ratio n_max / n_min",
                                  y_label=_metric_label(ctx.metric), unit="%")
    section.figures.append(Figure("acc-vs-ir", f"{_metric_label(ctx.metric)} vs downstream imbalance ratio",
                                  "One line per method (and grid setting); mean over seeds with ±1 s.d.",
                                  chart, "No finished trial with a dataset.imbalance_ratio parameter and "
                                         f"a {ctx.objective} value yet."))
    return section


def _at_main_ir(ctx: _Context) -> tuple[pd.DataFrame, str]:
    if ctx.ir_main is None:
        return ctx.trials, ""
    return ctx.trials[ctx.trials[IMBALANCE] == ctx.ir_main], f" at downstream IR = {charts.fmt(ctx.ir_main)}"


@SECTIONS.register("groups")
def _groups_section(ctx: _Context) -> Section:
    frame, where = _at_main_ir(ctx)
    section = Section("groups", "Data- vs parameter-imbalance groups" + where,
                      "D-groups by downstream training count (many > 100, medium 20–100, few < 20); "
                      "P-groups are thirds of the classes by the backbone's estimated pre-training prior "
                      "q̂ (many = largest). Test split; mean ± s.d. over seeds.")
    split = ctx.metric.split("/", 1)[0]
    for kind, prefix in (("D", "d"), ("P", "p")):
        metrics = [f"{split}/{prefix}_{g}" for g in GROUPS]
        categories = [f"{kind}-{g}" for g in GROUPS]
        stats = _series_stats(ctx, frame, None, metrics) if not frame.empty else {}
        series = [Series(label, ctx.colours.get(label, charts.PALETTE[0]),
                         {c: stats[label][None][m] for c, m in zip(categories, metrics)})
                  for label in _ordered(list(stats), ctx)]
        chart = charts.bar_chart(categories, series, x_label=f"{kind}-group", y_label=f"{split} accuracy (%)", unit="%")
        section.figures.append(Figure(f"{prefix}-groups", f"{kind}-group accuracy per method{where}",
                                      f"Mean per-class accuracy of the classes in each {kind}-group.", chart,
                                      f"No finished trial reports {metrics[0]} yet."))
    section.figures += _heatmaps(ctx, frame, where)
    return section


def _heatmaps(ctx: _Context, frame: pd.DataFrame, where: str) -> list[Figure]:
    split = ctx.metric.split("/", 1)[0]
    metrics = [f"{split}/dp_{d}_{p}" for d in GROUPS for p in GROUPS]
    stats = _series_stats(ctx, frame, None, metrics) if not frame.empty else {}
    values = [s.mean for label in stats for s in stats[label][None].values() if math.isfinite(s.mean)]
    if not values:
        return [Figure("dp-heatmap", f"D x P accuracy{where}", "", None,
                       f"No finished trial reports the D x P grid ({metrics[0]} ...) yet.")]
    vmin, vmax = min(values), max(values)
    figures = []
    for i, label in enumerate(_ordered(list(stats), ctx)):
        grid = [[stats[label][None][f"{split}/dp_{d}_{p}"] for p in GROUPS] for d in GROUPS]
        chart = charts.heatmap(grid, [f"D-{g}" for g in GROUPS], [f"P-{g}" for g in GROUPS], title=label,
                               vmin=vmin, vmax=vmax, unit="%", row_title="downstream (D) group",
                               col_title="pre-training (P) group")
        figures.append(Figure(f"dp-heatmap-{i}", f"D x P {split} accuracy (%): {label}",
                              "Shared colour scale across methods; n/a = empty cell.", chart,
                              f"{label}: every D x P cell is empty (NaN)."))
    return figures


@SECTIONS.register("backdoor")
def _backdoor_section(ctx: _Context) -> Section:
    section = Section("backdoor", "Backdoor adjustment: confounder count and weighting",
                      f"Backdoor trials only. At each M (or weighting) the configuration with the best "
                      f"{ctx.objective} is shown; mean ± s.d. over seeds.")
    frame = ctx.trials[ctx.trials[METHOD] == BACKDOOR] if METHOD in ctx.trials else ctx.trials.iloc[0:0]
    frame, where = (frame, "") if ctx.ir_main is None else (frame[frame[IMBALANCE] == ctx.ir_main],
                                                           f" (downstream IR = {charts.fmt(ctx.ir_main)})")
    y_label = _metric_label(ctx.metric)
    empty = f"No finished backdoor trial{where} yet (method.name = backdoor)."
    m_chart = w_chart = None
    # The M a trial used (its strata when set), as the trainable reported it; else the M asked for.
    m_column = EFFECTIVE_M if EFFECTIVE_M in frame and frame[EFFECTIVE_M].notna().all() else CONFOUNDERS
    if not frame.empty and m_column in frame:
        extra = [WEIGHTING] if WEIGHTING in frame else []
        m_stats = _series_stats(ctx, frame, m_column, [ctx.metric], extra_by=extra, drop=[METHOD],
                                empty_label=BACKDOOR)
        palette = charts.color_map(list(m_stats))
        m_chart = charts.line_chart([Series(label, palette[label], {x: v[ctx.metric] for x, v in m_stats[label].items()})
                                     for label in m_stats],
                                    x_label="confounder count M (foundation models in the adjustment)",
                                    y_label=y_label, x_kind="linear", unit="%")
    if not frame.empty and WEIGHTING in frame:
        w_stats = _series_stats(ctx, frame, WEIGHTING, [ctx.metric], drop=[METHOD], empty_label=BACKDOOR)
        categories = sorted({str(x) for v in w_stats.values() for x in v})
        palette = charts.color_map(list(w_stats)) if len(w_stats) > 1 else {BACKDOOR: ctx.colours.get(
            next((c for c in ctx.colours if c.startswith(BACKDOOR)), ""), charts.PALETTE[0])}
        w_chart = charts.bar_chart(categories, [Series(label, palette.get(label, charts.PALETTE[0]),
                                                       {str(x): v[ctx.metric] for x, v in w_stats[label].items()})
                                                for label in w_stats],
                                   x_label="weighting of the strata P(c)", y_label=y_label, unit="%")
    section.figures.append(Figure("acc-vs-m", f"{y_label} vs confounder count M{where}",
                                  "One line per weighting scheme.", m_chart, empty))
    section.figures.append(Figure("acc-vs-weighting", f"{y_label} vs weighting scheme{where}",
                                  "Best M per weighting scheme, selected on validation.", w_chart, empty))
    return section


GAIN_METRICS = {"gain/test/acc": "test accuracy", "gain/test/p_true_few": "P-few (true prior)",
                "gain/test/p_few": "P-few (q_hat)"}
"""Paired gains of a backdoor trial over the best single model (trainables/methods/backdoor.py
defines them: backdoor - best single, per replicate, then mean and sample s.d.)."""


@SECTIONS.register("ensembles")
def _ensembles_section(ctx: _Context) -> Section:
    section = Section("ensembles", "Ensembles vs the best single model",
                      "Gain of each grid setting's selected backdoor configuration over the best single "
                      "model of its pool (chosen on validation, per replicate), in points; bars are the mean "
                      "over replicates, whiskers the sample s.d. of the paired differences. A bar above 0 "
                      "beats the strongest baseline, not just a fixed backbone.")
    frame = ctx.trials[ctx.trials[METHOD] == BACKDOOR] if METHOD in ctx.trials else ctx.trials.iloc[0:0]
    metrics = [m for m in GAIN_METRICS if m in frame]
    chart = None
    if not frame.empty and metrics:
        # one bar group per cell (a grid setting; never pooled across cells), named by its id and
        # the series axes; the cell's full grid values are in the per-cell table and the CLI table
        extra = [IMBALANCE] if IMBALANCE in frame and frame[IMBALANCE].nunique() > 1 else []
        stats = _series_stats(ctx, frame, None, metrics, extra_by=extra + ["cell"], drop=[METHOD],
                              empty_label=BACKDOOR)
        categories = list(stats)
        palette = charts.color_map([GAIN_METRICS[m] for m in metrics])
        chart = charts.bar_chart(
            categories,
            [Series(GAIN_METRICS[m], palette[GAIN_METRICS[m]],
                    {c: stats[c][None][m] for c in categories if None in stats[c]}) for m in metrics],
            x_label="grid setting", y_label="gain over the best single model", unit="pt",
            width=max(7.0, 0.9 * len(categories)), height=5.0, y_zero=False, tick_rotation=35.0)
    section.figures.append(Figure("gain", "Backdoor minus the best single model",
                                  "Per grid setting; test split, scored once for the configuration "
                                  "selected on validation.", chart,
                                  "No backdoor trial reported gains over single models (backdoor.baselines)."))
    return section


@SECTIONS.register("search")
def _search_section(ctx: _Context) -> Section:
    section = Section("search", "Search: parameter importances and parallel coordinates",
                      f"Per cell with a search space. Importances: Optuna's fANOVA on the cell's study "
                      f"(objective {ctx.objective}). Lines: one per proposal (mean over its seeds).")
    searched_cells = []
    for cell, cell_trials in ctx.trials.groupby("cell", sort=True):
        analysis = analyse_cell(ctx.study, str(cell), cell_trials, ctx.objective, ctx.mode, ctx.optuna_storage)
        # A cell searched when it has searched parameters or more than one proposal.
        if analysis.searched or len(analysis.groups) > 1:
            searched_cells.append(analysis)
    if not searched_cells:
        reason = "No cell of this study searched: every cell ran one configuration (per seed)."
        section.figures += [Figure("importance", "Parameter importances", "", None, reason),
                            Figure("parallel", "Parallel coordinates", "", None, reason)]
        return section
    for i, analysis in enumerate(searched_cells):
        section.figures += _cell_figures(i, analysis, ctx)
    return section


def _cell_figures(i: int, analysis: CellSearch, ctx: _Context) -> list[Figure]:
    importance = None
    if analysis.importances:
        importance = charts.hbar_chart(list(analysis.importances.items()),
                                       x_label="fANOVA importance (share of objective variance)")
    axes = [Axis(axis_name(c), _axis_kind([g.params[c] for g in analysis.groups]), [g.params[c] for g in analysis.groups])
            for c in analysis.searched]
    objective = [g.objective * PERCENT for g in analysis.groups]
    axes.append(Axis(f"{ctx.objective} (%)", "linear", list(objective)))
    finite = [j for j, v in enumerate(objective) if math.isfinite(v)]
    best = (max if ctx.mode == "max" else min)(finite, key=lambda j: objective[j]) if finite else None
    parallel = charts.parallel_coordinates(axes, objective, colour_label=ctx.objective, highlight=best)
    n = len(analysis.groups)
    return [
        Figure(f"importance-{i}", f"Parameter importances: cell {analysis.cell}",
               analysis.note if importance else "", importance,
               f"Cell {analysis.cell}: {analysis.note}."),
        Figure(f"parallel-{i}", f"Parallel coordinates: cell {analysis.cell}", f"{n} proposal(s).", parallel,
               f"Cell {analysis.cell}: no searched parameter in its runs to draw ({n} proposal(s))."),
    ]


def _axis_kind(values: list[object]) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        lo, hi = min(present), max(present)  # type: ignore[type-var]
        return "log" if lo > 0 and hi / lo >= 100 else "linear"
    return "cat"


def _cell_table(ctx: _Context, data: StudyData, axes: Sequence[str], ui_url: str) -> dict:
    """One row per grid cell: its selected configuration's ``metric`` (mean ± s.d. over seeds), the
    margin over the best other method of the same setting (the other grid values equal), the
    setting's winner, and links to the cell run and its selected trial runs.

    The selected trials are those tracking tagged on the cell run (``ltbias.selected_run``); the
    numbers come from the same runs, selected again here by the same rule when the tag is missing.
    """
    setting_axes = [a for a in axes if a != METHOD]
    runs = data.cells.set_index("cell") if not data.cells.empty else data.cells
    rows = []
    for sel in select(ctx.trials, ["cell"], ctx.objective, ctx.mode):
        (cell,) = sel.key
        first = sel.runs.iloc[0]
        tagged = list(runs.loc[cell, "selected_runs"]) if cell in runs.index else []
        chosen = tagged or list(sel.runs["run_id"])
        rows.append({"cell": cell, "cell_url": run_url(ui_url, data.experiment_id, runs.loc[cell, "run_id"])
                     if cell in runs.index else None,
                     "values": [_cell(first.get(a)) for a in axes], "method": first.get(METHOD),
                     "setting": tuple(_cell(first.get(a)) for a in setting_axes),
                     "objective": sel.stat(ctx.objective), "stat": sel.stat(ctx.metric),
                     "selected": [(i + 1, run_url(ui_url, data.experiment_id, r)) for i, r in enumerate(chosen)]})
    for row in rows:
        others = [o["stat"].mean for o in rows if o["setting"] == row["setting"] and o is not row
                  and math.isfinite(o["stat"].mean)]
        best_other = (max if ctx.mode == "max" else min)(others) if others else math.nan
        row["margin"] = row["stat"].mean - best_other if others else math.nan
        row["winner"] = bool(others) and (row["margin"] > 0 if ctx.mode == "max" else row["margin"] < 0)
    rows.sort(key=lambda r: (r["setting"], _method_rank(r["method"], ctx.method_order), r["cell"]))
    return {"columns": [axis_name(a) for a in axes], "rows": [
        {**r, "objective": _stat_text(r["objective"]), "stat": _stat_text(r["stat"]),
         "margin": "–" if not math.isfinite(r["margin"]) else f"{r['margin']:+.2f}"} for r in rows]}


def _stat_text(st: Stat) -> str:
    if not math.isfinite(st.mean):
        return "–"
    spread = f" ± {st.std:.2f}" if st.std is not None and math.isfinite(st.std) else ""
    return f"{st.mean:.2f}{spread} (n={st.n})"


def _counts(data: StudyData) -> dict[str, int]:
    status = data.trials["status"].value_counts().to_dict() if not data.trials.empty else {}
    return {"cells": len(data.cells), "trials": len(data.trials), "finished": int(status.get("FINISHED", 0)),
            "failed": int(status.get("FAILED", 0)), "running": int(status.get("RUNNING", 0)),
            "killed": int(status.get("KILLED", 0))}


def _trial_table(data: StudyData, params: list[str], ui_url: str) -> dict:
    metrics = [m for m in TABLE_METRICS if m in data.trials]
    columns = ["run", "cell", "seed", "status", "method", "IR"] + [axis_name(p) for p in params] + metrics
    rows = []
    frame = data.trials.sort_values(["cell", "seed", "start_time"], na_position="last") if not data.trials.empty else data.trials
    for rec in frame.to_dict("records"):
        cells = [_cell(rec.get("seed")), rec["status"], _cell(rec.get(METHOD)), _cell(rec.get(IMBALANCE))]
        cells += [_cell(rec.get(p)) for p in params]
        cells += [_cell(rec.get(m), PERCENT) for m in metrics]
        rows.append({"name": rec["run_name"] or rec["run_id"], "cell": rec["cell"],
                     "url": run_url(ui_url, data.experiment_id, rec["run_id"]), "cells": cells})
    return {"columns": columns, "rows": rows}


def _cell(value: object, scale: float | None = None) -> str:
    if value is None or (not isinstance(value, (list, tuple)) and pd.isna(value)):
        return "–"
    if scale is not None:
        return f"{float(value) * scale:.2f}"  # type: ignore[arg-type]
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def write_report(html: str, out: Path) -> Path:
    """Write the report to ``out`` (parent folders created)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out


def log_report(data: StudyData, path: Path) -> str:
    """Log ``path`` as ``report/report.html`` on the study run; return the artifact's URI."""
    client = MlflowClient(tracking_uri=data.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / REPORT_FILE  # the artifact name is fixed whatever --out was called
        shutil.copyfile(path, staged)
        client.log_artifact(data.study_run_id, str(staged), artifact_path=REPORT_ARTIFACT_DIR)
    artifact_uri = client.get_run(data.study_run_id).info.artifact_uri
    return f"{artifact_uri.rstrip('/')}/{REPORT_ARTIFACT_DIR}/{REPORT_FILE}"
