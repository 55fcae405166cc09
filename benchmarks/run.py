"""Run the benchmarks and write ``<out>/<name>.json`` and ``<out>/SUMMARY.md``.

    python -m benchmarks.run [--only NAME] [--quick] [--skip-demo] [--out DIR]

Each result holds name, goal, ratio (the headline value, see ``unit``), passed_goal, details,
the machine (CPU, cores, load average before and after, library versions, GPU) and the command.
The summary table is built from every result file in ``--out``, so a ``--only`` rerun keeps the
other rows (each row says when it ran). Timings are noisy on a shared machine: read the load average.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

BENCHES = {  # name -> module, in the order they run (cheap ones first)
    "trainable_throughput": "benchmarks.bench_throughput",
    "backdoor_vs_stage1": "benchmarks.bench_backdoor",
    "linear_probe_feature_cache": "benchmarks.bench_linear_cache",
    "platform_overhead": "benchmarks.bench_overhead",
    "concurrency_scaling": "benchmarks.bench_scaling",
    "peer": "benchmarks.bench_peer",
    "stage2_throughput": "benchmarks.bench_stage2",
    "scaling": "benchmarks.bench_study_scaling",
    "fixed_cost": "benchmarks.bench_fixed_cost",
    "gpu_vit_b16_adaptformer": "benchmarks.bench_gpu",
    "demo_wall_time": "benchmarks.bench_demo",
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ('unknown' elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine() -> dict:
    """What the numbers were measured on."""
    import mlflow
    import optuna
    import ray
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return {"cpu_model": cpu_model(), "cpu_cores": os.cpu_count(), "gpu": gpu,
            "python": sys.version.split()[0], "torch": torch.__version__, "ray": ray.__version__,
            "mlflow": mlflow.__version__, "optuna": optuna.__version__,
            "torch_threads_default": torch.get_num_threads()}


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run_one(name: str, workdir: Path, quick: bool, base: dict, command: str) -> dict:
    """Run benchmark ``name``; a crash becomes a result with the error instead of stopping the run."""
    module = importlib.import_module(BENCHES[name])
    load_before, start = load_average(), time.perf_counter()
    try:
        res = module.run(workdir, quick=quick)
    except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
        res = {"name": name, "goal": "?", "ratio": None, "passed_goal": None,
               "details": {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}}
    res["seconds"] = round(time.perf_counter() - start, 2)
    res["quick"] = quick
    res["ran_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    res["machine"] = {**base, "load_average_before": load_before, "load_average_after": load_average()}
    res["command"] = command
    return res


def summary(out: Path) -> str:
    """SUMMARY.md: one table row per result file in ``out``, then the machine of the latest run."""
    results = []
    for path in sorted(out.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and {"name", "goal", "ratio", "passed_goal"} <= set(data):
            results.append(data)
    order = list(BENCHES)
    results.sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    lines = ["# Benchmarks", "", "Each value is a ratio (or time) measured side by side in one run; "
             "details and raw timings are in the JSON file of the same name.", "",
             "| measure | value | goal | met? | ran at | quick | load avg (1 min, before) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        value = "n/a" if r["ratio"] is None else f"{r['ratio']:.4g} {r.get('unit', '')}".strip()
        met = {True: "yes", False: "**no**", None: "-"}[r["passed_goal"]]
        status = r["details"].get("error") or r["details"].get("status")
        label = r.get("measure", r["name"])
        label += f" ({status})" if status and status not in label else ""
        load = (r.get("machine", {}).get("load_average_before") or ["?"])[0]
        lines.append(f"| `{r['name']}`: {label} | {value} | {r['goal']} | {met} | {r.get('ran_at', '?')} "
                     f"| {r.get('quick', '?')} | {load} |")
    if results:
        latest = max(results, key=lambda r: r.get("ran_at", ""))
        m = latest.get("machine", {})
        lines += ["", f"Machine: {m.get('cpu_model')}, {m.get('cpu_cores')} cores, GPU: {m.get('gpu')}; "
                      f"Python {m.get('python')}, torch {m.get('torch')}, Ray {m.get('ray')}, "
                      f"MLflow {m.get('mlflow')}, Optuna {m.get('optuna')}.",
                  f"Command: `{latest.get('command')}`.", "",
                  "The cores may be shared with other processes: the load average column says how "
                  "busy the machine was; each ratio's two sides were timed interleaved in the same run."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the number of benchmarks that crashed."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", choices=list(BENCHES), metavar="NAME",
                    help=f"run only this benchmark (repeatable): {', '.join(BENCHES)}")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run; numbers mean little)")
    ap.add_argument("--skip-demo", action="store_true", help="do not run the demo study (minutes)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="scratch folder for caches, zoo and studies (default: a fresh temporary one)")
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local benchmark Ray needs no token
    names = [n for n in (args.only or list(BENCHES)) if not (args.skip_demo and n == "demo_wall_time")]
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    base = machine()
    crashed = 0
    with tempfile.TemporaryDirectory(prefix="ltbias-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in names:
            print(f"[benchmarks] {name} ...", flush=True)
            res = run_one(name, workdir, args.quick, base, command.strip())
            crashed += "error" in res["details"]
            (args.out / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
            print(f"[benchmarks] {name}: {res['ratio']} {res.get('unit', '')} (goal {res['goal']}, "
                  f"met: {res['passed_goal']}) in {res['seconds']} s", flush=True)
    (args.out / "SUMMARY.md").write_text(summary(args.out), encoding="utf-8")
    print(f"[benchmarks] wrote {args.out}/SUMMARY.md")
    return crashed


if __name__ == "__main__":
    sys.exit(1 if main() else 0)
