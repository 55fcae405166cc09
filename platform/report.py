"""``python -m platform.report STUDY.yaml``: write the study's HTML report and log it to MLflow.

The report (one self-contained HTML file) is written to ``--out`` and logged to the study run as
the artifact ``report/report.html``, so it opens in the MLflow UI. Exit status: 0 written; 2 the
study file is invalid or the tracking store holds no such study.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import yaml
from pydantic import ValidationError

from platform import paths
from platform.errors import Issue, SpecError
from platform.studyfile import load_study as load_study_spec

EXIT_OK, EXIT_INVALID = 0, 2
DEFAULT_OBJECTIVE, DEFAULT_MODE = "val/acc", "max"


@dataclass(frozen=True)
class StudyTarget:
    """Which study to read and from where, resolved from a study file and/or flags."""

    name: str
    tracking_uri: str
    optuna_storage: str
    objective: str | None
    mode: str | None


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The options naming a study and its tracking store (shared by report and export)."""
    parser.add_argument("study_file", nargs="?", metavar="STUDY.yaml",
                        help="the study file (its name, tracking_uri, storage and search metric are used)")
    parser.add_argument("--study", metavar="NAME", help="the study (MLflow experiment) name, instead of a file")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow tracking URI (default: the study file's, else sqlite:///<repo>/outputs/mlflow.db)")
    parser.add_argument("--run-id", metavar="ID", help="a study run other than the latest")


def resolve_study(args: argparse.Namespace) -> StudyTarget:
    """Name, tracking URI, Optuna RDB and search objective of the study the flags point at."""
    if bool(args.study_file) == bool(args.study):
        raise SpecError([Issue("", "give either a study file (STUDY.yaml) or --study NAME, not "
                                + ("both" if args.study else "neither"))])
    if args.study_file:
        spec = load_study_spec(args.study_file)
        uri = args.tracking_uri or spec.tracking_uri or paths.default_tracking_uri()
        return StudyTarget(spec.name, uri, paths.optuna_storage(uri, spec.storage or paths.default_storage()),
                           spec.search.metric, spec.search.mode)
    uri = args.tracking_uri or paths.default_tracking_uri()
    return StudyTarget(args.study, uri, paths.optuna_storage(uri, paths.default_storage()), None, None)


def open_study(args: argparse.Namespace):
    """(target, its StudyData from MLflow) for the CLI's study arguments; None after printing why."""
    from dashboards.data import StudyNotFoundError, load_study

    try:
        target = resolve_study(args)
        db = paths.sqlite_path(target.tracking_uri)
        if db is not None and not db.expanduser().exists():  # opening it would create an empty DB
            print(f"error: --tracking-uri {target.tracking_uri}: no database at {db}; run the study "
                  "first or pass the tracking URI it used", file=sys.stderr)
            return None
        return target, load_study(target.name, target.tracking_uri, args.run_id)
    except SpecError as e:
        print(f"error: invalid study\n{e}", file=sys.stderr)
    except (ValidationError, yaml.YAMLError) as e:
        print(f"error: invalid study {args.study_file}: {e}", file=sys.stderr)
    except StudyNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
    return None


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m platform.report", description=__doc__.split("\n")[0],
                                epilog="exit status: 0 written, 2 invalid input or no such study")
    add_study_arguments(p)
    p.add_argument("--out", metavar="PATH", type=Path,
                   help="HTML file to write (default: <outputs>/reports/<study>.html)")
    p.add_argument("--mlflow-url", metavar="URL", default=None,
                   help="base URL of the MLflow UI the report links to (default http://127.0.0.1:5000)")
    p.add_argument("--optuna-storage", metavar="PATH_OR_URL",
                   help="journal file or RDB URL of the cells' Optuna studies (default: "
                        "optuna.journal.log next to the tracking DB)")
    p.add_argument("--objective", metavar="METRIC",
                   help="selection metric on the validation split (default: the study's search.metric, else val/acc)")
    p.add_argument("--mode", choices=["max", "min"], help="direction of --objective (default: the study's search.mode)")
    p.add_argument("--metric", default="test/acc", metavar="METRIC",
                   help="metric the charts show for the selected configurations (default test/acc)")
    p.add_argument("--no-log", action="store_true", help="write the file only; do not log it to MLflow")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    from dashboards.data import run_url
    from dashboards.report import DEFAULT_UI_URL, build_report, log_report, write_report

    args = build_parser().parse_args(argv)
    opened = open_study(args)
    if opened is None:
        return EXIT_INVALID
    target, data = opened
    objective = args.objective or target.objective or (data.spec.get("search") or {}).get("metric") or DEFAULT_OBJECTIVE
    if any(part.startswith("test") for part in objective.split("/")):
        print(f"error: --objective {objective}: selecting on a test metric leaks the test split; "
              "use a val/ metric (test numbers are shown with --metric)", file=sys.stderr)
        return EXIT_INVALID
    mode = args.mode or target.mode or (data.spec.get("search") or {}).get("mode") or DEFAULT_MODE
    ui_url = args.mlflow_url or DEFAULT_UI_URL
    html = build_report(data, objective=objective, mode=mode, metric=args.metric, ui_url=ui_url,
                        optuna_storage=args.optuna_storage or target.optuna_storage)
    if args.study_file:
        html = _with_published(html, args.study_file, data, objective, mode)
    out = write_report(html, args.out or paths.outputs_dir() / "reports" / f"{data.study}.html")
    print(f"report: {out.resolve()}")
    if not args.no_log:
        print(f"logged to the study run as {log_report(data, out)}")
    print(f"study run in the MLflow UI: {run_url(ui_url, data.experiment_id, data.study_run_id)}")
    return EXIT_OK


def published_rows(plan, trials, objective: str, mode: str, metrics: set[str]) -> list[dict]:
    """``select_rows``-like rows (one per grid cell: the configuration selected on ``objective``,
    seed mean and spread of ``metrics``) from the report's trial table."""
    from dashboards.summary import select, usable

    cells = {c.id: c for c in plan.cells}
    rows = []
    for sel in select(usable(trials, objective), ["cell"], objective, mode):
        cell = cells.get(sel.key[0] if isinstance(sel.key, tuple) else sel.key)
        if cell is None:  # stage-1 prerequisites
            continue
        row = {"cell": cell.id, "label": cell.label, "kind": cell.kind, "values": dict(cell.values)}
        for metric in metrics:
            stat = sel.stat(metric, scale=1.0)
            row[metric], row[f"{metric}_std"] = stat.mean, stat.std
        rows.append(row)
    return rows


def _with_published(html: str, study_file: str, data, objective: str, mode: str) -> str:
    """The report with a 'published vs ours' section when the study lists published numbers
    (also printed)."""
    import html as html_lib

    from platform.plan import make_plan
    from platform.published import compare, format_comparison

    spec = load_study_spec(study_file)
    if not spec.published:
        return html
    plan = make_plan(spec, study_file)
    rows = published_rows(plan, data.trials, objective, mode, {p.metric for p in spec.published})
    text = format_comparison(compare(spec.published, rows, {c.id: c.base_config["method"]["name"]
                                                            for c in plan.cells}))
    print(text)
    section = (f'<section id="published"><h2>Published vs ours</h2><pre>{html_lib.escape(text)}</pre></section>\n')
    return html.replace("</main>", section + "</main>", 1) if "</main>" in html else html + section


if __name__ == "__main__":
    sys.exit(main())
