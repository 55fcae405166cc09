"""The fault matrix: inject every fault of issue 13 into tiny studies and write docs/RELIABILITY.md.

    python -m benchmarks.faults [--only NAME[,NAME...]] [--out docs/RELIABILITY.md] [--keep DIR]

Each scenario runs ``python -m platform.run`` as a subprocess on a toy study of a few trials
(about a minute each on 2 cores), injects one fault (a signal, a second driver, a locked store, a
NaN loss, a damaged cache entry, hostile input, an absent cluster, a mistyped ``--storage``, a
killed worker node), lets the study finish (``--resume`` where the fault stopped it) and audits
what the study left behind:

- runs lost: planned trials without exactly one terminal MLflow run (FINISHED or FAILED);
- runs duplicated: MLflow trial runs beyond one per trial + metric rows logged twice at the same
  (run, key, step) + Optuna trials beyond the planned configurations + Tune trials beyond plan.

``observed`` says what happened (exit codes, retries, what was moved aside). The table is written
as generated; rerun one row with ``--only``, which keeps the other rows of an existing file.
No time limit is asserted: the matrix reports, the fault tests (tests/test_faults.py) check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "RELIABILITY.md"

TOY = {
    "dataset": {"name": "toy_lt", "imbalance_ratio": 10, "val_per_class": 5,
                "world": {"num_classes": 6, "n_max": 1000, "test_per_class": 10}},
    "backbones": [{"pretrain": {"corpus_size": 600, "epochs": 1, "width": 32, "depth": 1}}],
    "finetune": {"peft": "adaptformer", "head": "cosine", "epochs": 8, "batch_size": 16,
                 "augment": False},
    "method": {"name": "ce"},
    "scheduler": {"fifo": {}},
    "resources": {"cpu": 1, "gpu": 0},
    "max_failures": 2,
    "max_concurrent": 1,
    "seeds": [0],
    "search": {"algorithm": "optuna", "num_samples": 3,
               "space": {"finetune.lr": {"logfloat": [0.001, 0.1]}}},
}
SAMPLES = 3


@dataclass
class Row:
    """One line of the matrix."""

    fault: str
    expected: str
    observed: str
    lost: int | str
    duplicated: int | str


# --------------------------------------------------------------------------- a study to break

class Study:
    """A toy study in its own folder, run through the CLI."""

    def __init__(self, work: Path, name: str, **fields: object) -> None:
        self.work, self.name = work, name
        self.file = work / f"{name}.yaml"
        self.file.write_text(yaml.safe_dump({"name": name, **TOY, **fields}, sort_keys=False))
        self.outputs = work / "outputs"
        self.experiment = self.outputs / "ray_results" / name
        self.tracking = f"sqlite:///{self.outputs / 'mlflow.db'}"
        self.env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI",
                                                                   "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
        self.env.update(RAY_AUTH_MODE="disabled", LTBIAS_OUTPUTS=str(self.outputs),
                        PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
        self.log = work / f"{name}.log"

    def start(self, *args: str) -> subprocess.Popen:
        """The driver in its own process group, output to the study's log."""
        with open(self.log, "ab") as fh:
            return subprocess.Popen([sys.executable, "-m", "platform.run", str(self.file), *args],
                                    cwd=REPO, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def run(self, *args: str, timeout: float = 1200) -> tuple[int, str]:
        """(exit status, output) of a driver run to its end."""
        out = subprocess.run([sys.executable, "-m", "platform.run", str(self.file), *args],
                             cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        return out.returncode, out.stdout + out.stderr

    def results(self) -> dict[str, list[dict]]:
        """Tune's result rows per trial."""
        out: dict[str, list[dict]] = {}
        for file in self.experiment.glob("*/result.json"):
            rows = [json.loads(x) for x in file.read_text().splitlines() if x.strip()]
            if rows:
                out[rows[0]["trial_id"]] = rows
        return out

    def wait(self, what: str, check: Callable[[], bool], proc: subprocess.Popen | None,
             timeout: float = 900) -> None:
        """Poll ``check`` until true; raise naming ``what`` (with the log tail) otherwise."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if check():
                return
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.3)
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise RuntimeError(f"{self.name}: timed out waiting for {what}\n{tail}")

    def mid_run(self) -> bool:
        """One trial finished and another past epoch 2."""
        res = self.results().values()
        done = [r for r in res if "test/acc" in r[-1]]
        running = [r for r in res if "test/acc" not in r[-1] and r[-1].get("epoch", 0) >= 2]
        return bool(done) and bool(running)

    def audit(self, planned: int = SAMPLES, configs: int = SAMPLES) -> tuple[int, int, str]:
        """(runs lost, runs duplicated, details) of what the study left behind."""
        db = self.outputs / "mlflow.db"
        if not db.exists():
            return planned, 0, "no MLflow store"
        with sqlite3.connect(db) as con:
            exp = con.execute("SELECT experiment_id FROM experiments WHERE name = ?", (self.name,)).fetchone()
            if exp is None:
                return planned, 0, "no MLflow experiment"
            runs = con.execute(
                "SELECT r.run_uuid, r.status, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                "AND t.key = 'ltbias.trial_id' JOIN tags l ON l.run_uuid = r.run_uuid AND "
                "l.key = 'ltbias.level' AND l.value = 'trial' WHERE r.experiment_id = ? AND "
                "r.lifecycle_stage = 'active'", exp).fetchall()
            twice = con.execute(
                "SELECT COUNT(*) FROM (SELECT m.run_uuid, m.key, m.step FROM metrics m JOIN runs r "
                "ON r.run_uuid = m.run_uuid WHERE r.experiment_id = ? AND r.lifecycle_stage = 'active' "
                "GROUP BY m.run_uuid, m.key, m.step HAVING COUNT(*) > 1)", exp).fetchone()[0]
        per_trial: dict[str, list[str]] = {}
        for _, status, trial in runs:
            per_trial.setdefault(trial, []).append(status)
        terminal = {t for t, s in per_trial.items() if len(s) == 1 and s[0] in ("FINISHED", "FAILED")}
        tune_trials = len(self.results())
        optuna_extra = 0
        counts, _ = optuna_counts(self.outputs, f"{self.name}/")
        optuna_extra = sum(max(0, n - configs) for n in counts.values())
        lost = planned - len(terminal)
        duplicated = (len(runs) - len(per_trial)) + twice + optuna_extra + max(0, tune_trials - planned)
        details = (f"{len(per_trial)} trials with runs, {len(runs)} trial runs, {twice} metric "
                   f"(run, key, step) logged twice, {optuna_extra} extra Optuna trials, "
                   f"{tune_trials} Tune trials")
        return lost, duplicated, details


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the driver's whole process group (it and the local Ray it started)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def hold_lock(db: Path, seconds: float) -> subprocess.Popen:
    """Another process holding an exclusive lock on SQLite database ``db`` for ``seconds``."""
    code = ("import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60); "
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(float(sys.argv[2])); "
            "c.execute('COMMIT')")
    proc = subprocess.Popen([sys.executable, "-c", code, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()  # wait until it holds the lock
    return proc


def hold_journal_lock(journal: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the lock of Optuna journal file ``journal`` (the ``<file>.lock``
    symlink of Optuna's JournalFileSymlinkLock) for ``seconds``; Optuna itself breaks a lock older
    than its grace period (30 s), so a longer hold measures that recovery."""
    code = ("import os, sys, time; lock = sys.argv[1] + '.lock'; os.symlink(sys.argv[1], lock); "
            "print('locked', flush=True); time.sleep(float(sys.argv[2]));\n"
            "try: os.unlink(lock)\nexcept FileNotFoundError: pass")
    proc = subprocess.Popen([sys.executable, "-c", code, str(journal), str(seconds)], stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()
    return proc


def free_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- the scenarios

def driver_killed(work: Path, sig: int, label: str) -> Row:
    study = Study(work, f"driver-{label.lower()}")
    proc = study.start()
    study.wait("one trial finished and one mid-run", study.mid_run, proc)
    kill_group(proc, sig) if sig == signal.SIGKILL else proc.send_signal(sig)
    code = proc.wait(timeout=600)
    if sig == signal.SIGKILL:
        time.sleep(2)
    text = study.log.read_text(errors="replace")
    hint = text.rsplit("continue with:", 1)[1].strip().splitlines()[0] if "continue with:" in text else ""
    args = shlex.split(hint)[4:] if hint else ["--resume"]
    rc, out = study.run(*args)
    lost, dup, details = study.audit()
    observed = (f"driver exit {code}{' (resume hint printed)' if hint else ''}; resume exit {rc}; "
                f"{details}")
    expected = ("rc 130 with a resume command carrying every flag; resume finishes"
                if sig == signal.SIGTERM else "resume finishes: finished trials kept, the running one "
                                                "continues from its checkpoint")
    return Row(f"driver {label} mid-study", expected, observed, lost, dup)


def second_driver(work: Path) -> Row:
    study = Study(work, "two-drivers")
    proc = study.start()
    study.wait("a trial past epoch 2", lambda: any(r[-1].get("epoch", 0) >= 2 for r in study.results().values()), proc)
    rc2, out2 = study.run("--resume", timeout=600)
    named = f"pid {proc.pid}" in out2
    rc1 = proc.wait(timeout=1800)
    lost, dup, details = study.audit()
    return Row("second driver on the same study and storage", "second exits 2 naming the first; the "
               "first finishes alone", f"second exit {rc2} ({'names' if named else 'does not name'} "
               f"the first), first exit {rc1}; {details}", lost, dup)



def optuna_counts(outputs: Path, prefix: str = "") -> tuple[dict[str, int], int]:
    """(trials per Optuna study whose name starts with ``prefix``, trials left RUNNING) in the
    study's Optuna journal file (``platform.paths.open_optuna_storage``)."""
    import optuna
    from optuna.trial import TrialState

    from platform.paths import OPTUNA_JOURNAL, open_optuna_storage
    journal = outputs / OPTUNA_JOURNAL
    if not journal.exists():
        return {}, 0
    storage = open_optuna_storage(str(journal))
    counts, running = {}, 0
    for summary in optuna.get_all_study_summaries(storage=storage):
        if summary.study_name.startswith(prefix):
            trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)
            counts[summary.study_name] = len(trials)
            running += sum(t.state == TrialState.RUNNING for t in trials)
    return counts, running

def store_locked(work: Path, which: str, seconds: float = 45.0) -> Row:
    study = Study(work, f"{which}-locked")
    proc = study.start()
    study.wait("a trial past epoch 2", lambda: any(r[-1].get("epoch", 0) >= 2 for r in study.results().values()), proc)
    # Optuna's store is a journal file: its writers take ``<journal>.lock``
    target = study.outputs / ("mlflow.db" if which == "mlflow" else "optuna.journal.log")
    holder = hold_lock(target, seconds) if which == "mlflow" else hold_journal_lock(target, seconds)
    holder.wait(timeout=seconds + 120)
    rc = proc.wait(timeout=1800)
    text = study.log.read_text(errors="replace")
    retried = len(re.findall(r"retrying in", text))
    lost, dup, details = study.audit()
    _, running = optuna_counts(study.outputs)
    return Row(f"exclusive lock on {target.name} for {seconds:g} s", "writes retried with backoff; the "
               "study finishes (exit 0), no Optuna trial left RUNNING",
               f"exit {rc}, {retried} retried writes logged, {running} Optuna trials RUNNING; {details}",
               lost, dup)


def nan_loss(work: Path) -> Row:
    study = Study(work, "nan-loss", search={}, grid={"finetune.epochs": [1, 3]})
    rc, out = study.run("--set", "runtime.fault=nan_at_epoch:2")
    failures = [f.read_text().count("Failure #") for f in study.experiment.glob("*/error.txt")]
    with sqlite3.connect(study.outputs / "mlflow.db") as con:
        cells = con.execute("SELECT r.status FROM runs r JOIN tags l ON l.run_uuid = r.run_uuid AND "
                            "l.key = 'ltbias.level' AND l.value = 'cell'").fetchall()
    lost, dup, details = study.audit(planned=2, configs=1)
    return Row("NaN loss in one trial (max_failures 2)", "that trial fails once (not retried) with its "
               "reason; its cell FAILED; the other cell finishes; exit 1",
               f"exit {rc}; failures per errored trial {failures}; cell runs {sorted(s for s, in cells)}; "
               f"{details}", lost, dup)


def cache_damaged(work: Path) -> Row:
    import numpy as np

    from trainables.cache import Stage1Cache, Stage1Result

    def result(seed: int) -> Stage1Result:
        rng = np.random.default_rng(seed)
        return Stage1Result(val_logits=rng.normal(size=(6, 3)).astype(np.float32), val_labels=np.arange(6) % 3,
                            test_logits=rng.normal(size=(4, 3)).astype(np.float32), test_labels=np.arange(4) % 3,
                            train_counts=np.array([5, 3, 1]), group_counts=np.array([5, 3, 1]),
                            group_rule="fixed", class_names=["a", "b", "c"], config={"seed": seed})

    cache = Stage1Cache(str(work / "cache"))
    damages = {"truncated logits.parquet": lambda p, o: _truncate(Path(p, "logits.parquet")),
               "truncated meta.json": lambda p, o: _truncate(Path(p, "meta.json")),
               "two entries swapped": _swap}
    outcomes, wrong = [], 0
    for i, (what, damage) in enumerate(damages.items()):
        key, other = f"{i:02d}" + "a" * 62, f"{i:02d}" + "b" * 62
        cache.put(key, result(0))
        cache.put(other, result(1))
        damage(cache.path(key), cache.path(other))
        calls = []
        got = cache.get_or_create(key, lambda: calls.append(1) or result(0))
        wrong += int(not np.array_equal(got.val_logits, result(0).val_logits))
        outcomes.append(f"{what}: recomputed {len(calls)}x")
    moved = len(list((Path(cache.root) / "damaged").iterdir()))
    return Row("stage-1 cache entry damaged", "detected by checksum or key, moved to damaged/ with a "
               "warning, recomputed once; right numbers", f"{'; '.join(outcomes)}; {moved} entries in "
               f"damaged/; wrong results {wrong}", 0, 0)


def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def _swap(a: str, b: str) -> None:
    os.rename(a, a + ".swap")
    os.rename(b, a)
    os.rename(a + ".swap", b)


def hostile_input(work: Path) -> Row:
    bomb = work / "bomb.yaml"
    lines = ["name: bomb", "l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    bomb.write_text("\n".join(lines) + "\n")
    grid = work / "grid.yaml"
    grid.write_text("name: grid\ngrid:\n" + "".join(
        f"  {p}: [{', '.join(str(0.001 * (i + 1)) for i in range(100))}]\n"
        for p in ("finetune.lr", "finetune.weight_decay", "finetune.momentum", "finetune.warmup_epochs")))
    latin = work / "latin.yaml"
    latin.write_bytes(b"name: latin\ndescription: caf\xe9\n")
    # A wrapper process runs the CLI so that its children's peak RSS is the CLI's alone.
    measure = ("import json, resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, "
               "text=True); print(json.dumps([r.returncode, r.stderr, "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
    parts = []
    for label, path in (("alias bomb", bomb), ("10^8-cell grid", grid), ("non-UTF-8", latin)):
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "platform.run",
                              str(path), "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=600)
        code, err, rss = json.loads(out.stdout)
        where = re.search(rf"{re.escape(str(path))}(:\d+)?", err)
        parts.append(f"{label}: exit {code}, {len(err)} B message"
                     f"{' at line ' + where.group(1)[1:] if where and where.group(1) else ''}, "
                     f"{time.monotonic() - t0:.1f} s, peak RSS {rss // 1024} MB")
    return Row("hostile study files", "exit 2 at once with a short message (line numbers), bounded memory",
               "; ".join(parts), 0, 0)


def absent_cluster(work: Path) -> Row:
    study = Study(work, "no-cluster")
    parts = []
    for address in (f"127.0.0.1:{free_port()}", f"ray://127.0.0.1:{free_port()}"):
        t0 = time.monotonic()
        rc, out = study.run("--address", address, timeout=600)
        parts.append(f"{address}: exit {rc}{', traceback' if 'Traceback' in out else ''} "
                     f"after {time.monotonic() - t0:.0f} s")
    return Row("--address of a cluster that is not there", "exit 3 with a message after a short "
               "connect timeout; nothing written", "; ".join(parts), 0, 0)


def mistyped_resume(work: Path) -> Row:
    study = Study(work, "typo")
    rc0, _ = study.run()
    before = sum(optuna_counts(study.outputs)[0].values())
    rc, out = study.run("--resume", "--storage", str(work / "ray_resluts"))
    after = sum(optuna_counts(study.outputs)[0].values())
    lost, dup, details = study.audit()
    return Row("--resume with a mistyped --storage", "exit 2 (nothing to resume); the real run's "
               "Optuna studies untouched", f"first run exit {rc0}; mistyped resume exit {rc}; Optuna "
               f"trials {before} -> {after}; {details}", lost, dup)


def worker_node_killed(work: Path) -> Row:
    """The 2-node loopback cluster test (tests/test_faults.py) and the record it writes."""
    test = "tests/test_faults.py::test_worker_node_killed_mid_study_trials_resume_from_checkpoint_one_run_each"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test],
                         cwd=REPO, capture_output=True, text=True, timeout=1800,
                         env={**os.environ, "LTBIAS_NODE_KILL_SQLITE": "1"})
    record = REPO / "tests" / "_artifacts" / "node_kill.json"
    if out.returncode != 0 or not record.exists():
        return Row("worker node SIGKILLed (2-node cluster)", "trials resume from checkpoints elsewhere",
                   f"test failed: {out.stdout[-300:]}", "?", "?")
    r = json.loads(record.read_text())
    return Row("worker node SIGKILLed (2-node loopback cluster)", "the killed trial resumes from its "
               "checkpoint on the head; one run per trial", f"{r['trials']} trials, {r['retries_total']} "
               f"retries, killed after epoch {r['killed_after_epoch']}, {r['mlflow_trial_runs']} MLflow "
               "trial runs", r["trials_planned"] - r["trials"], r["mlflow_trial_runs"] - r["trials"])


SCENARIOS: dict[str, Callable[[Path], Row]] = {
    "driver_sigkill": lambda w: driver_killed(w, signal.SIGKILL, "SIGKILL"),
    "driver_sigterm": lambda w: driver_killed(w, signal.SIGTERM, "SIGTERM"),
    "second_driver": second_driver,
    "mlflow_lock": lambda w: store_locked(w, "mlflow"),
    "optuna_lock": lambda w: store_locked(w, "optuna"),
    "nan_loss": nan_loss,
    "cache_damaged": cache_damaged,
    "hostile_input": hostile_input,
    "absent_cluster": absent_cluster,
    "mistyped_resume": mistyped_resume,
    "worker_node_killed": worker_node_killed,
}


# --------------------------------------------------------------------------- the report

def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_report(rows: dict[str, Row], out: Path, command: str) -> None:
    """docs/RELIABILITY.md: the matrix, one row per scenario (in SCENARIOS order)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    lines = ["# Reliability: the fault matrix", "",
             f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
             f"({os.cpu_count()} CPUs, load average {load[0]:.1f}). Each row injects one fault into "
             f"a toy study ({SAMPLES} Optuna trials x {TOY['finetune']['epochs']} epochs unless said) "
             "and audits MLflow, Tune and Optuna afterwards (see `benchmarks/faults.py`).", "",
             "| scenario | fault | expected | observed | runs lost | runs duplicated |",
             "|---|---|---|---|---:|---:|"]
    for name in SCENARIOS:
        if name in rows:
            r = rows[name]
            lines.append(f"| {name} | {_cell(r.fault)} | {_cell(r.expected)} | {_cell(r.observed)} | "
                         f"{r.lost} | {r.duplicated} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_report(path: Path) -> dict[str, Row]:
    """The rows of an existing report (so that --only keeps the others)."""
    rows: dict[str, Row] = {}
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 6 and cells[0] in SCENARIOS:
            rows[cells[0]] = Row(*[c.replace("\\|", "|") for c in cells[1:4]], cells[4], cells[5])
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios; exit 1 when a row lost or duplicated anything or failed to run."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.split("\n")[0])
    p.add_argument("--only", help="comma-separated scenario names: " + ", ".join(SCENARIOS))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the report (default docs/RELIABILITY.md)")
    p.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"--only: unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    rows = read_report(args.out) if args.only else {}
    bad = False
    with tempfile.TemporaryDirectory(prefix="ltbias-faults-") as tmp:
        root = args.keep or Path(tmp)
        for name in names:
            work = root / name
            work.mkdir(parents=True, exist_ok=True)
            t0 = time.monotonic()
            try:
                row = SCENARIOS[name](work)
            except Exception as exc:  # noqa: BLE001 - a scenario that breaks is a row that says so
                row = Row(name, "-", f"scenario failed: {type(exc).__name__}: {str(exc)[:300]}", "?", "?")
            row.observed += f" ({time.monotonic() - t0:.0f} s)"
            rows[name] = row
            bad |= row.lost != 0 or row.duplicated != 0
            print(f"{name}: lost {row.lost}, duplicated {row.duplicated} | {row.observed}", flush=True)
            write_report(rows, args.out, "python -m benchmarks.faults" + (f" --only {args.only}" if args.only else ""))
    print(f"wrote {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
