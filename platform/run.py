"""``python -m platform.run STUDY.yaml``: validate a study, print its plan, run it, print results.

Exit status: 0 done (or a valid --dry-run); 1 the study ran but some trials failed beyond their
retries; 2 invalid input (the message on stderr names file, line, field, value and fix), a study
another driver is running, or ``--resume`` with nothing to continue; 3 the environment failed (Ray
cannot start or be reached, a store is unreachable); 130 interrupted (Ctrl-C or SIGTERM: runs are
marked KILLED and the command that continues the study is printed).
Ray, torch and MLflow are imported only after the study is valid, so errors come back fast.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import sys
from typing import Any, Sequence

import yaml
from pydantic import ValidationError

from platform import raystart
from platform.errors import EnvironmentFailure, PlatformInputError, SpecError, show_value
from platform.guard import DriverLock
from platform.plan import Plan, StudyOutcome, check_fits, local_capacity, make_plan
from platform.studyfile import load_study
from trainables.stats import STD_SUFFIX

EXIT_OK, EXIT_FAILED_TRIALS, EXIT_INVALID, EXIT_ENVIRONMENT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
RESULT_METRICS = ("test/acc", "test/d_many", "test/d_medium", "test/d_few",
                  "test/p_many", "test/p_medium", "test/p_few")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m platform.run", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="exit status: 0 done, 1 trials failed beyond their retries, "
                                       "2 invalid input (or the study is running elsewhere, or "
                                       "--resume found nothing), 3 environment (Ray, stores), "
                                       "130 interrupted (Ctrl-C, SIGTERM)")
    p.add_argument("study", help="the study file, e.g. studies/smoke.yaml")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and print the plan; start nothing")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a field before validation (VALUE is YAML), e.g. "
                        "--set finetune.epochs=1 --set grid.method.name=[ce,la]; repeatable")
    p.add_argument("--max-concurrent", type=int, metavar="N",
                   help="trials running at once (overrides max_concurrent; 0 = no limit)")
    p.add_argument("--address", metavar="ADDR",
                   help="Ray cluster to join (e.g. auto or ray://head:10001); default: a local Ray")
    p.add_argument("--storage", metavar="PATH_OR_URI",
                   help="Ray Tune storage: a shared path or an s3:// / gs:// URI (overrides storage)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI (overrides tracking_uri)")
    p.add_argument("--skip-data-check", action="store_true",
                   help="preflight checks models, tags and checkpoints but not the data sets' files "
                        "(plan a study on a machine without the data)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of this study (same spec), reusing its runs; "
                        "exits 2 when there is none")
    p.add_argument("--resume-if-any", action="store_true",
                   help="like --resume, but start the study when there is nothing to continue")
    return p


def resume_command(args: argparse.Namespace) -> str:
    """The command that continues this study: the same study and flags, plus --resume."""
    parts = ["python", "-m", "platform.run", args.study]
    for text in args.overrides:
        parts += ["--set", text]
    for flag, value in (("--max-concurrent", args.max_concurrent), ("--address", args.address),
                        ("--storage", args.storage), ("--tracking-uri", args.tracking_uri)):
        if value is not None:
            parts += [flag, str(value)]
    parts.append("--resume")
    return shlex.join(parts)


def _sigterm_as_interrupt() -> None:
    """SIGTERM (``docker stop``, Kubernetes) stops the study like Ctrl-C: Tune's handler (during
    the run) checkpoints and returns; otherwise KeyboardInterrupt."""
    def on_term(signum: int, frame: object) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)


def _flags(args: argparse.Namespace) -> list[tuple[str, Any, str]]:
    """The location flags as (study path, value, flag text) overrides."""
    out = []
    for dest, path, flag in (("max_concurrent", "max_concurrent", "--max-concurrent"),
                             ("storage", "storage", "--storage"),
                             ("tracking_uri", "tracking_uri", "--tracking-uri")):
        value = getattr(args, dest)
        if value is not None:
            out.append((path, value, f"{flag} {value}"))
    return out


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        cells = [str(c).rjust(w) if _numeric(c) else str(c).ljust(w) for c, w in zip(row, widths)]
        return "  ".join(cells).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def _numeric(text: Any) -> bool:
    try:
        float(str(text))
        return True
    except ValueError:
        return False


def _number(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.4f}"
    if isinstance(v, (list, tuple)) and all(isinstance(x, float) for x in v):
        return "[" + ",".join(f"{x:.3g}" for x in v) + "]"  # e.g. searched simplex weights
    return show_value(v)


def _method_label(method: dict) -> str:
    """A cell's resolved method block: 'la tau=2' (the fields its method has, after the grid)."""
    return " ".join([str(method["name"])] + [f"{k}={v}" for k, v in method.items() if k != "name"])


def format_plan(plan: Plan) -> str:
    """What --dry-run prints: the cells with kind and trials, stages, totals, resources."""
    s = plan.study
    ax = s.seed_axes()
    seeds = (f"{len(s.replicates())} replicate(s) = {len(ax.world)} world x {len(ax.pretrain)} pre-training x "
             f"{len(ax.finetune)} fine-tuning seed(s)")
    searched = [c for c in plan.cells if c.space]
    lines = [f"study {s.name} ({plan.study_path}, spec {plan.spec_hash[:12]})"]
    if s.description:
        lines.append(f"  {s.description}")
    lines.append(f"  {len(plan.cells)} cell(s) x {seeds}; select on {plan.metric} ({plan.mode})")
    lines.append(f"  seeds: world {ax.world}, pre-training {ax.pretrain}, fine-tuning {ax.finetune}")
    if searched:
        lines.append(f"  search {s.search.algorithm} over {', '.join(s.search.space)} in "
                     f"{len(searched)} cell(s)")
    sched = s.scheduler.kind + (f" (grace_period {s.scheduler.asha.grace_period}, reduction_factor "
                                f"{s.scheduler.asha.reduction_factor:g}, max_t {s.scheduler.asha.max_t})"
                                if s.scheduler.asha else "")
    lines.append(f"  scheduler {sched}; retries per trial {s.max_failures}")
    rows = [[c.id, c.kind, str(c.trials), str(len(c.prerequisites)),
             f"{c.num_samples} x {', '.join(c.space)}" if c.space else "-", _method_label(c.base_config["method"]),
             c.label]
            for c in plan.cells]
    lines += ["", _table(["cell", "kind", "trials", "needs", "search", "method", "label"], rows), ""]
    cell_trials = sum(c.trials for c in plan.cells)
    lines.append(f"stages: stage 1 prerequisites {len(plan.prerequisites)} (run first, shared by "
                 f"cells; 'needs' counts them per cell), cell trials {cell_trials}")
    lines.append(f"total trials: {plan.total_trials}")
    res = ", ".join(f"{k} {v:g}" for k, v in plan.resources.items())
    lines.append(f"resources per trial: {res}; max concurrent: "
                 f"{plan.max_concurrent or 'as resources allow'}")
    lines.append(f"tracking: {plan.tracking_uri}")
    lines.append(f"storage:  {plan.storage}")
    return "\n".join(lines)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pct(row: dict, key: str, signed: bool = False) -> str:
    """``row[key]`` in percent with its sample s.d. (``key_std``): '85.3 ± 1.2'; '-' when missing."""
    v = row.get(key)
    if v is None:
        return "-"
    if not _finite(v):
        return "nan"
    text = f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"
    sd = row.get(key + STD_SUFFIX)
    return text + (f" ± {100 * sd:.1f}" if _finite(sd) else "")


def _number_sd(row: dict, key: str) -> str:
    """``row[key]`` with its sample s.d. ('0.54 ± 0.03'); the s.d. left out when undefined (n = 1)."""
    sd = row.get(key + STD_SUFFIX)
    return _number(row.get(key)) + (f" ± {_number(sd)}" if _finite(sd) else "")


def _gain(row: dict, key: str) -> str:
    """A paired gain in points: '+3.1 ± 1.2 [+0.5, +5.6]' (s.d. over replicates, 95 % interval)."""
    text = _pct(row, key, signed=True)
    lo, hi = row.get(key + "_lo"), row.get(key + "_hi")
    if _finite(lo) and _finite(hi):
        text += f" [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return text


def format_outcome(outcome: StudyOutcome, plan: Plan) -> str:
    """The results tables and how to browse them.

    1. Per cell, the selected configuration: every metric in percent, mean ± sample s.d. over
       the n replicates (``trainables.stats``).
    2. Ensembles vs single models (backdoor cells): the backdoor's test accuracy; the best single
       model (member x baseline method chosen on validation, per replicate) and the mean single
       model; the paired gain over the best single model, ± s.d. over replicates with its 95 %
       interval (t over replicates with >= 3, else a bootstrap over test images); the same gain on
       P-few classes by q_hat and by the true pre-training prior; the pool's prior agreement.
    3. q_hat's error per backbone: Spearman correlation with the true prior and total variation.
    """
    header = ["cell", "label", "best configuration", plan.metric, "n",
              *[m.removeprefix("test/") if m != "test/acc" else m for m in RESULT_METRICS]]
    rows = []
    for row in outcome.rows:
        best = " ".join(f"{k}={_number(v)}" for k, v in (row.get("best_config") or {}).items())
        n = row.get("n_seeds")
        metric_row = {**row, plan.metric: row.get("metric", row.get(plan.metric))}
        rows.append([str(row.get("cell", "?")), str(row.get("label", "")), best or "-",
                     _pct(metric_row, plan.metric), str(n) if n is not None else "-",
                     *[_pct(row, m) for m in RESULT_METRICS]])
    lines = ["results (percent; mean ± sample s.d. over n replicates)", _table(header, rows)]
    ens = [r for r in outcome.rows if "gain/test/acc" in r]
    if ens:
        lines += ["", "ensembles vs single models (test, percent; gain = backdoor - best single, paired "
                      "over replicates, ± s.d. [95 % interval])",
                  _table(["cell", "label", "n", "backdoor", "best single", "mean single", "gain",
                          "P-few gain (q_hat)", "P-few gain (true prior)", "prior spearman"],
                         [[str(r.get("cell", "?")), str(r.get("label", "")), str(r.get("n_seeds", "-")),
                           _pct(r, "test/acc"), _pct(r, "baseline/best_single/acc"),
                           _pct(r, "baseline/mean_single/acc"), _gain(r, "gain/test/acc"),
                           _gain(r, "gain/test/p_few"), _gain(r, "gain/test/p_true_few"),
                           _number(r.get("pool/prior_spearman"))] for r in ens])]
    if outcome.prior_rows:
        lines += ["", "q_hat vs the true pre-training prior, per backbone (mean ± s.d. over its replicates)",
                  _table(["backbone", "n", "spearman", "total variation"],
                         [[r["backbone"], str(r["n"]),
                           _number_sd(r, "prior/spearman"), _number_sd(r, "prior/tv")]
                          for r in outcome.prior_rows])]
    if plan.study.published:
        from platform.published import compare, format_comparison
        methods = {c.id: c.base_config["method"]["name"] for c in plan.cells}
        lines += ["", format_comparison(compare(plan.study.published, outcome.rows, methods))]
    lines += ["", f"trials: {outcome.total_trials}, failed beyond retries: {outcome.failed_trials}; "
                  f"study run {outcome.study_run_id}"]
    uri = outcome.tracking_uri or plan.tracking_uri
    lines += ["", "browse the results:", f"  python -m platform.ui --tracking-uri {shlex.quote(uri)}"]
    if uri.startswith(("http://", "https://")):
        lines.append(f"  open {uri}")
    else:
        lines.append(f"  mlflow ui --backend-store-uri {uri} --workers 1 --host 127.0.0.1")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        study = load_study(args.study, args.overrides, _flags(args))
        plan = make_plan(study, args.study)
        from platform.preflight import preflight  # imports open_clip / timm only for studies using them
        preflight(plan, check_data=not args.skip_data_check)
        unfit = None
        if args.address is None:  # a local Ray: this machine is the whole cluster
            try:
                check_fits(plan, *local_capacity(count_gpus=plan.resources["gpu"] > 0))
            except SpecError as e:
                if not args.dry_run:
                    raise
                unfit = e  # a dry run still shows the plan of a study meant for a bigger cluster
    except SpecError as e:
        print(f"error: invalid study\n{e}", file=sys.stderr)
        return EXIT_INVALID
    except PlatformInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INVALID
    except (ValidationError, yaml.YAMLError, FileNotFoundError) as e:  # not raised by our loader
        print(f"error: invalid study {args.study}: {e}", file=sys.stderr)
        return EXIT_INVALID
    print(format_plan(plan), flush=True)
    if args.dry_run:
        if unfit is not None:
            print(f"\nwarning: this machine cannot run the study as it is:\n{unfit}")
        print("\ndry run: nothing was started")
        return EXIT_OK
    if args.resume_if_any:
        args.resume = True
    _sigterm_as_interrupt()
    try:
        if args.address is None and not os.environ.get("RAY_ADDRESS"):
            # A local Ray listens on 127.0.0.1 only; Ray reads this when it is imported.
            os.environ[raystart.LOOPBACK_ENV] = "0"
        # A second driver of this study is refused before it starts a Ray of its own.
        DriverLock(plan.storage, plan.study.name).check_free()
        # Ray starts on a thread while platform.execute imports MLflow and opens the stores;
        # run_study claims the start (platform.raystart).
        raystart.start_in_background(args.address)
        from platform.execute import run_study  # imports MLflow: only for a valid study that runs
        outcome = run_study(plan, args)
    except PlatformInputError as e:  # e.g. unwritable storage, --resume of a changed spec
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INVALID
    except EnvironmentFailure as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with:\n  {resume_command(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        raystart.abandon_start()  # a start run_study did not claim (it failed or was interrupted first)
    print()
    print(format_outcome(outcome, plan))
    return EXIT_FAILED_TRIALS if outcome.failed_trials else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
