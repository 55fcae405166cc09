"""Surviving faults with real processes on loopback: a worker node dies, the driver is SIGKILLed,
a loss turns NaN, the tracking server or the storage is unreachable, a checkpoint is truncated.

Every end-to-end test runs ``python -m platform.run`` as a subprocess on a tiny toy study, reads
what the study left behind (MLflow runs, Ray Tune result files, Optuna's database) and checks that
each trial ran to completion exactly once, with exactly one MLflow run. The 2-node test writes its
measurements to tests/_artifacts/node_kill.json.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "tests" / "_artifacts"
RAY = Path(sys.executable).with_name("ray")

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process trees from /proc (Linux)")

# A toy study whose trials run long enough (many cheap epochs) to be interrupted mid-run.
TOY_STUDY = {
    "dataset": {"name": "toy_lt", "imbalance_ratio": 10, "val_per_class": 5,
                "world": {"num_classes": 6, "n_max": 1000, "test_per_class": 10}},
    "backbones": [{"pretrain": {"corpus_size": 600, "epochs": 1, "width": 32, "depth": 1}}],
    "finetune": {"peft": "adaptformer", "head": "cosine", "epochs": 12, "batch_size": 16,
                 "augment": False},
    "method": {"name": "ce"},
    "scheduler": {"fifo": {}},
    "resources": {"cpu": 1, "gpu": 0},
    "max_failures": 2,
}


# --------------------------------------------------------------------------- helpers

def write_study(folder: Path, name: str, **fields) -> Path:
    """A study file ``folder/name.yaml``: TOY_STUDY with ``fields`` replacing top-level keys."""
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **TOY_STUDY, **fields}, sort_keys=False))
    return path


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def study_env(outputs: Path) -> dict[str, str]:
    """The environment of a study subprocess: results under ``outputs``, no cluster inherited, and
    not the loopback switch an in-process local study of this test session set (platform.run sets it
    itself for a local study; a multi-node ``ray start`` refuses to run with it)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env.update(RAY_AUTH_MODE="disabled", LTBIAS_OUTPUTS=str(outputs), PYTHONUNBUFFERED="1",
               RAY_DEDUP_LOGS="0", HF_HUB_OFFLINE="1")
    return env


def start_cli(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``python -m platform.run ARGS`` in its own process group, output to ``log``."""
    with open(log, "wb") as fh:
        return subprocess.Popen([sys.executable, "-m", "platform.run", *args], cwd=REPO, env=env,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def run_cli(args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, float]:
    """(exit status, output, seconds) of ``python -m platform.run ARGS``."""
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "platform.run", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=timeout)
    return out.returncode, out.stdout + out.stderr, time.monotonic() - t0


def tree_pids(pid: int) -> set[int]:
    """``pid`` and its live descendants, from /proc (no psutil in the environment)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in out and Path(f"/proc/{p}").exists():
            out.add(p)
            todo += children.get(p, [])
    return out


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``pid`` and every process below it (only processes this test started)."""
    pids = tree_pids(pid)
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"  # a zombie is dead, only not reaped yet


def wait_for(what: str, check: Callable[[], object], timeout: float, proc: subprocess.Popen | None = None,
             log: Path | None = None, every: float = 0.2) -> object:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (and the log tail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(every)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}")


def trial_results(experiment: Path) -> dict[str, list[dict]]:
    """Tune's result.json lines of every trial folder of ``experiment`` (by trial id)."""
    out: dict[str, list[dict]] = {}
    for file in experiment.glob("*/result.json"):
        rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def trial_runs(tracking_uri: str, study: str) -> list:
    """The trial-level MLflow runs of ``study``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(study)
    assert exp is not None, f"no MLflow experiment {study!r}"
    return client.search_runs([exp.experiment_id], "tags.`ltbias.level` = 'trial'", max_results=1000)


def assert_one_finished_run_per_trial(runs: list, trial_ids: set[str]) -> None:
    """Exactly one MLflow run per Tune trial, each FINISHED."""
    ids = [r.data.tags.get("ltbias.trial_id") for r in runs]
    assert sorted(ids) == sorted(trial_ids), (ids, trial_ids)
    assert {r.info.status for r in runs} == {"FINISHED"}, [(r.data.tags.get("ltbias.trial_id"), r.info.status) for r in runs]


def epochs_of(rows: list[dict]) -> list[int]:
    """The epochs a trial reported, in order (a restore shows as a step back or a gap)."""
    return [int(r["epoch"]) for r in rows if "epoch" in r]


# --------------------------------------------------------------------------- a 2-node cluster

class LoopbackCluster:
    """A Ray head and one worker node on 127.0.0.1, each a ``ray start --block`` process tree
    with its own temp dir and ports, so that killing one node kills nothing else on the machine
    (``ray stop`` would stop every Ray on it)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.port = free_port()
        self.nodes: dict[str, subprocess.Popen] = {}
        self.temp_dirs: list[str] = []

    @property
    def address(self) -> str:
        """The GCS address drivers join."""
        return f"127.0.0.1:{self.port}"

    def _start(self, role: str, args: list[str]) -> None:
        # Unix socket paths must stay short: a fresh /tmp folder, not pytest's deep tmp_path.
        temp = tempfile.mkdtemp(prefix=f"ray{role[0]}", dir="/tmp")
        self.temp_dirs.append(temp)
        env = study_env(self.logs)
        # Notice a dead node within seconds instead of Ray's default of about half a minute.
        env.update(RAY_health_check_period_ms="500", RAY_health_check_timeout_ms="1000",
                   RAY_health_check_failure_threshold="4")
        ports = ["--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port",
                 str(free_port()), "--metrics-export-port", str(free_port()),
                 "--runtime-env-agent-port", str(free_port())]
        cmd = [str(RAY), "start", "--block", "--num-cpus", "1", "--num-gpus", "0",
               "--node-ip-address", "127.0.0.1", "--temp-dir", temp,
               "--object-store-memory", str(150 * 1024**2), "--disable-usage-stats", *ports, *args]
        with open(self.logs / f"ray-{role}.log", "wb") as fh:
            self.nodes[role] = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def start(self) -> None:
        """Start the head, then the worker; return once the cluster has 2 CPUs."""
        self._start("head", ["--head", "--port", str(self.port), "--include-dashboard=false"])
        wait_for("the Ray head", lambda: self._cpus() >= 1, 90, self.nodes["head"],
                 self.logs / "ray-head.log", every=1.0)
        self._start("worker", ["--address", self.address])
        wait_for("the Ray worker node", lambda: self._cpus() >= 2, 90, self.nodes["worker"],
                 self.logs / "ray-worker.log", every=1.0)

    def _cpus(self) -> float:
        """Alive CPUs in the cluster, asked through a short-lived driver (0 when unreachable)."""
        code = (f"import ray; ray.init(address={self.address!r}, logging_level='ERROR', "
                "log_to_driver=False); print(ray.cluster_resources().get('CPU', 0))")
        try:
            out = subprocess.run([sys.executable, "-c", code], env=study_env(self.logs),
                                 capture_output=True, text=True, timeout=30)
            return float(out.stdout.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            return 0.0

    def worker_pids(self) -> set[int]:
        """Every process of the worker node (raylet, agents, trial actors)."""
        return tree_pids(self.nodes["worker"].pid)

    def kill(self, role: str) -> None:
        """SIGKILL every process of one node: an abrupt machine loss."""
        kill_tree(self.nodes[role].pid)

    def stop(self) -> None:
        """Kill both nodes (teardown)."""
        for role in ("worker", "head"):
            if role in self.nodes:
                kill_tree(self.nodes[role].pid, signal.SIGTERM)
                kill_tree(self.nodes[role].pid)


def _pg_bin() -> Path | None:
    """The folder of PostgreSQL's server binaries (Debian keeps them out of PATH)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    return None


def postgres_stack_available() -> bool:
    """Whether tests/test_tracking_server.py runs (PostgreSQL, moto, boto3, psycopg2 installed)."""
    return _pg_bin() is not None and all(importlib.util.find_spec(m) is not None
                                         for m in ("boto3", "moto", "psycopg2"))


# --------------------------------------------------------------------------- the tests

@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(postgres_stack_available() and not os.environ.get("LTBIAS_NODE_KILL_SQLITE"),
                    reason="the same node kill, with the same checks, runs in tests/test_tracking_server.py "
                           "against PostgreSQL + S3 (one 2-minute run, not two); LTBIAS_NODE_KILL_SQLITE=1 "
                           "runs this one too (python -m benchmarks.faults does)")
def test_worker_node_killed_mid_study_trials_resume_from_checkpoint_one_run_each(tmp_path: Path) -> None:
    seeds = [0, 1, 2, 3]
    study = write_study(tmp_path, "node-kill", seeds=seeds)
    outputs = tmp_path / "outputs"
    tracking = f"sqlite:///{outputs / 'mlflow.db'}"
    experiment = outputs / "ray_results" / "node-kill"
    cluster = LoopbackCluster(tmp_path)
    t0 = time.monotonic()
    try:
        cluster.start()
        log = tmp_path / "driver.log"
        driver = start_cli([str(study), "--address", cluster.address], study_env(outputs), log)

        def worker_trial_mid_run() -> str | None:
            """A trial running on the worker node that has checkpointed and has epochs to go."""
            pids = cluster.worker_pids()
            for trial_id, rows in trial_results(experiment).items():
                last = rows[-1]
                if last.get("pid") in pids and not last.get("done") and \
                        2 <= last.get("epoch", 0) <= TOY_STUDY["finetune"]["epochs"] - 3:
                    return trial_id
            return None

        victim = wait_for("a trial checkpointed on the worker node", worker_trial_mid_run, 150,
                          driver, log, every=0.1)
        killed_at = max(epochs_of(trial_results(experiment)[victim]))
        cluster.kill("worker")
        code = driver.wait(timeout=200)
        wall = time.monotonic() - t0
        text = log.read_text(errors="replace")
        assert code == 0, text[-4000:]
    finally:
        cluster.stop()

    results = trial_results(experiment)
    assert len(results) == len(seeds)
    epochs = TOY_STUDY["finetune"]["epochs"]
    for rows in results.values():  # every trial reached its last epoch and the final report
        assert max(epochs_of(rows)) == epochs and "test/acc" in rows[-1]
    victim_epochs = epochs_of(results[victim])
    # Resumed from its last checkpoint: epoch 1 ran once, and no epoch ran more than twice (only
    # the ones after the last checkpoint that reached storage can repeat).
    assert victim_epochs.count(1) == 1, victim_epochs
    assert max(victim_epochs.count(e) for e in set(victim_epochs)) <= 2, victim_epochs

    runs = trial_runs(tracking, "node-kill")
    assert_one_finished_run_per_trial(runs, set(results))
    retries = {r.data.tags["ltbias.trial_id"]: int(r.data.tags.get("ltbias.retries", 0)) for r in runs}
    assert retries[victim] >= 1, retries

    record = {"trials": len(results), "trials_planned": len(seeds), "mlflow_trial_runs": len(runs),
              "retries_total": sum(retries.values()), "retries_per_trial": retries,
              "killed_trial": victim, "killed_after_epoch": killed_at,
              "victim_epochs_reported": victim_epochs, "wall_time_s": round(wall, 1),
              "epochs_per_trial": epochs, "nodes": 2, "cpus_per_node": 1}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "node_kill.json").write_text(json.dumps(record, indent=1) + "\n")
    print("node kill:", json.dumps(record))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_driver_sigkilled_then_resume_finishes_without_rerunning_or_duplicating(tmp_path: Path) -> None:
    samples = 4
    study = write_study(tmp_path, "driver-kill", max_concurrent=1, seeds=[0],
                        search={"algorithm": "optuna", "num_samples": samples,
                                "space": {"finetune.lr": {"logfloat": [0.001, 0.1]}}})
    outputs = tmp_path / "outputs"
    tracking = f"sqlite:///{outputs / 'mlflow.db'}"
    experiment = outputs / "ray_results" / "driver-kill"
    env = study_env(outputs)
    log = tmp_path / "driver.log"
    driver = start_cli([str(study)], env, log)
    try:
        def one_done_one_mid_run() -> bool:
            res = trial_results(experiment)
            done = [r for r in res.values() if r[-1].get("done") or "test/acc" in r[-1]]
            running = [r for r in res.values() if not (r[-1].get("done") or "test/acc" in r[-1])
                       and r[-1].get("epoch", 0) >= 2]
            return len(done) >= 1 and len(running) >= 1

        wait_for("one finished trial and one mid-run", one_done_one_mid_run, 200, driver, log, every=0.1)
        local_ray = tree_pids(driver.pid)  # the driver and the local Ray it started
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        for pid in local_ray if "local_ray" in locals() else tree_pids(driver.pid):
            kill_tree(pid)
    before = trial_results(experiment)
    finished_before = {t: len(rows) for t, rows in before.items() if "test/acc" in rows[-1]}
    assert finished_before and len(finished_before) < samples

    code, text, _ = run_cli([str(study), "--resume"], env, timeout=240)
    assert code == 0, text[-4000:]

    after = trial_results(experiment)
    assert len(after) == samples, sorted(after)
    for trial_id, n in finished_before.items():  # finished trials were not run again
        assert len(after[trial_id]) == n, trial_id
    for rows in after.values():
        assert max(epochs_of(rows)) == TOY_STUDY["finetune"]["epochs"] and "test/acc" in rows[-1]
    assert_one_finished_run_per_trial(trial_runs(tracking, "driver-kill"), set(after))
    # Optuna continued the same study: as many Optuna trials as planned, not one more.
    import optuna

    from platform.paths import open_optuna_storage
    summaries = optuna.get_all_study_summaries(
        storage=open_optuna_storage(str(outputs / "optuna.journal.log")))
    counts = {s.study_name: s.n_trials for s in summaries}
    assert list(counts.values()) == [samples], counts


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_nan_loss_fails_that_trial_once_with_its_reason_and_the_study_goes_on(tmp_path: Path) -> None:
    # Two cells: 1 epoch (never reaches the fault) and 3 epochs (NaN at epoch 2, on every retry,
    # so it is not retried although max_failures allows it).
    study = write_study(tmp_path, "nan-loss", max_failures=2,
                        grid={"finetune.epochs": [1, 3]})
    outputs = tmp_path / "outputs"
    code, text, _ = run_cli([str(study), "--set", "runtime.fault=nan_at_epoch:2"],
                            study_env(outputs), timeout=220)
    assert code == 1, text[-4000:]
    runs = trial_runs(f"sqlite:///{outputs / 'mlflow.db'}", "nan-loss")
    by_status = {r.info.status: r for r in runs}
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"], [r.info.status for r in runs]
    failed = by_status["FAILED"]
    assert failed.data.params["finetune.epochs"] == "3"
    reason = failed.data.tags.get("ltbias.error", "")
    assert "NonFiniteLossError" in reason and "epoch 2" in reason, reason
    assert "ltbias.retries" not in failed.data.tags  # a deterministic failure is not retried
    assert by_status["FINISHED"].data.params["finetune.epochs"] == "1"
    errors = list((outputs / "ray_results" / "nan-loss").glob("*/error.txt"))
    assert len(errors) == 1 and errors[0].read_text().count("Failure #") == 1
    # The cell whose every trial failed is FAILED, with the reason.
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")
    exp = client.get_experiment_by_name("nan-loss")
    cells = {r.data.tags["ltbias.cell"]: r for r in client.search_runs(
        [exp.experiment_id], "tags.`ltbias.level` = 'cell'")}
    failed_cell = cells[failed.data.tags["ltbias.cell"]]
    assert failed_cell.info.status == "FAILED" and "NonFiniteLossError" in failed_cell.data.tags["ltbias.error"]
    assert {r.info.status for c, r in cells.items() if c != failed.data.tags["ltbias.cell"]} == {"FINISHED"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_unreachable_tracking_server_fails_before_any_trial(tmp_path: Path) -> None:
    study = write_study(tmp_path, "no-tracking")
    uri = f"http://127.0.0.1:{free_port()}"
    code, text, _ = run_cli([str(study), "--tracking-uri", uri], study_env(tmp_path / "o"), 240)
    assert code == 3, text[-3000:]  # an environment failure, not bad input
    assert uri in text and "Traceback" not in text
    assert not (tmp_path / "o" / "ray_results" / "no-tracking").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_unwritable_storage_fails_before_any_trial(tmp_path: Path) -> None:
    study = write_study(tmp_path, "no-storage")
    # A path below a regular file cannot be created, even by root (who may write anywhere else).
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    storage = str(blocker / "ray_results")
    code, text, _ = run_cli([str(study), "--storage", storage], study_env(tmp_path / "o"), 240)
    assert code == 2, text[-3000:]
    assert storage in text and "Traceback" not in text


class _KeepCheckpoints:
    """A run_trial reporter that keeps a copy of every checkpoint and can resume from one."""

    def __init__(self, keep: Path, restore: Path | None = None) -> None:
        self.keep, self.restore, self.epochs = keep, restore, []

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        import shutil

        self.epochs.append(metrics["epoch"])
        if checkpoint_dir:
            shutil.copytree(checkpoint_dir, self.keep / f"epoch{metrics['epoch']}")

    def restore_dir(self) -> str | None:
        return str(self.restore) if self.restore else None


@pytest.mark.timeout(120)
def test_truncated_checkpoint_warns_and_the_trial_restarts_from_the_first_epoch(tmp_path: Path, caplog) -> None:
    # A checkpoint cut off mid-write (node lost while copying it) rather than garbage bytes.
    import logging

    import torch

    from platform.plan import make_plan
    from platform.studyfile import parse_study
    from trainables.checkpoint import CHECKPOINT_FILE
    from trainables.trainable import run_trial

    torch.set_num_threads(1)
    fields = {**TOY_STUDY, "finetune": {**TOY_STUDY["finetune"], "epochs": 2},
              "dataset": {**TOY_STUDY["dataset"], "world": {"num_classes": 6, "n_max": 60, "test_per_class": 10}},
              "storage": str(tmp_path / "storage")}
    plan = make_plan(parse_study(yaml.safe_dump({"name": "truncated", **fields})), "truncated.yaml")
    config = plan.cells[0].base_config
    run_trial(config, _KeepCheckpoints(tmp_path / "a"))  # also pre-trains the toy backbone
    state = tmp_path / "a" / "epoch1" / CHECKPOINT_FILE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])

    def fresh(name: str) -> dict:
        # A fresh stage-1 cache: the finished run's entry would otherwise be replayed, not trained.
        return {**config, "runtime": {**config["runtime"], "cache_dir": str(tmp_path / name)}}

    full = run_trial(fresh("cache-b"), None)  # the reference: same zoo, no checkpoint
    again = _KeepCheckpoints(tmp_path / "c", restore=state.parent)
    with caplog.at_level(logging.WARNING, logger="trainables.checkpoint"):
        resumed = run_trial(fresh("cache-c"), again)
    assert str(state) in caplog.text and "starting from scratch" in caplog.text
    assert again.epochs == [1, 2]  # trained from the start, not resumed at epoch 2
    assert resumed["test/acc"] == full["test/acc"] and resumed["val/acc"] == full["val/acc"]


# --------------------------------------------------------------------------- one driver, loopback, signals

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _address(hex_addr: str) -> str:
    """The text form of a /proc/net/tcp{,6} local address (``0100007F:1F90`` -> ``127.0.0.1``)."""
    import ipaddress
    host = hex_addr.split(":")[0]
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # IPv6: four 32-bit words, each in host (little-endian) order
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    addr = ipaddress.IPv6Address(words)
    return f"::ffff:{addr.ipv4_mapped}" if addr.ipv4_mapped else str(addr)


def listening_sockets(pids: set[int]) -> list[tuple[int, str, str]]:
    """(pid, process name, local address) of every listening TCP socket the processes hold."""
    inodes: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                inodes[fields[9]] = _address(fields[1])
    out = []
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        for link in links:
            if link.startswith("socket:[") and link[8:-1] in inodes:
                out.append((pid, name, inodes[link[8:-1]]))
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_local_study_listens_on_loopback_only_and_leaves_no_process_when_killed(tmp_path: Path) -> None:
    study = write_study(tmp_path, "loopback", seeds=[0, 1])
    env = study_env(tmp_path / "outputs")
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # what a user's shell has: nothing
    experiment = tmp_path / "outputs" / "ray_results" / "loopback"
    log = tmp_path / "driver.log"
    driver = start_cli([str(study)], env, log)
    seen: dict[tuple[int, str], str] = {}
    ray_pids: set[int] = set()
    try:
        def mid_run() -> bool:
            tree = tree_pids(driver.pid)
            ray_pids.update(tree - {driver.pid})
            for pid, name, addr in listening_sockets(tree):
                seen[(pid, addr)] = name
            return any(r[-1].get("epoch", 0) >= 2 for r in trial_results(experiment).values())

        wait_for("a trial at epoch 2", mid_run, 400, driver, log, every=0.5)
        mid_run()
        os.kill(driver.pid, signal.SIGKILL)  # the driver only: what it started must go too
        driver.wait(timeout=60)

        def all_gone() -> bool:
            return not any(_alive(p) for p in ray_pids)

        wait_for("the driver's Ray processes to end", all_gone, 240, every=1.0)
    finally:
        for pid in ray_pids:
            if _alive(pid):
                kill_tree(pid)
    names = set(seen.values())
    assert {"gcs_server", "raylet"} <= names, names  # the check saw Ray's servers
    exposed = {(name, addr) for (pid, addr), name in seen.items() if addr not in LOOPBACK}
    assert not exposed, f"listening beyond loopback: {sorted(exposed)}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_second_driver_exits_2_sigterm_stops_like_ctrl_c_and_resume_finishes(tmp_path: Path) -> None:
    samples = 3
    study = write_study(tmp_path, "two-drivers", max_concurrent=1, seeds=[0],
                        search={"algorithm": "optuna", "num_samples": samples,
                                "space": {"finetune.lr": {"logfloat": [0.001, 0.1]}}})
    outputs = tmp_path / "outputs"
    storage = tmp_path / "results"
    tracking = f"sqlite:///{outputs / 'mlflow.db'}"
    experiment = storage / "two-drivers"
    env = study_env(outputs)
    # Long enough trials that the study outlasts a second driver (refused before it starts Ray,
    # a few seconds) by a wide margin, also on a busy machine.
    flags = ["--set", "finetune.epochs=20", "--storage", str(storage), "--tracking-uri", tracking]
    log = tmp_path / "driver.log"
    driver = start_cli([str(study), *flags], env, log)
    try:
        wait_for("a trial at epoch 2", lambda: any(r[-1].get("epoch", 0) >= 2 for r in
                                                   trial_results(experiment).values()),
                 400, driver, log, every=0.3)
        # A second driver of the same study and storage stops at once, naming the first.
        code, text, _ = run_cli([str(study), *flags, "--resume"], env, timeout=240)
        assert code == 2, text[-3000:]
        assert f"pid {driver.pid}" in text and "already being run" in text and "Traceback" not in text
        # SIGTERM (docker stop) ends the study like Ctrl-C.
        driver.send_signal(signal.SIGTERM)
        code = driver.wait(timeout=240)
    finally:
        if driver.poll() is None:
            kill_tree(driver.pid)
    text = log.read_text(errors="replace")
    assert code == 130, text[-4000:]
    hint = text.rsplit("continue with:", 1)[1].strip().splitlines()[0]
    assert hint.endswith("--resume") and "Traceback" not in text
    for part in ("--set finetune.epochs=20", f"--storage {storage}", f"--tracking-uri {tracking}"):
        assert part in hint, hint
    runs = trial_runs(tracking, "two-drivers")
    assert runs and "RUNNING" not in {r.info.status for r in runs}
    assert "KILLED" in {r.info.status for r in runs}

    # The printed command continues the study: every trial once, one finished run each.
    import shlex
    code, text, _ = run_cli(shlex.split(hint)[3:], env, timeout=600)
    assert code == 0, text[-4000:]
    after = trial_results(experiment)
    assert len(after) == samples
    assert_one_finished_run_per_trial(trial_runs(tracking, "two-drivers"), set(after))
    import optuna

    from platform.paths import open_optuna_storage
    storage = open_optuna_storage(str(outputs / "optuna.journal.log"))
    counts = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage=storage)}
    assert list(counts.values()) == [samples], counts


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_with_nothing_to_continue_exits_2_and_touches_nothing(tmp_path: Path) -> None:
    study = write_study(tmp_path, "nothing-to-resume")
    outputs = tmp_path / "o"
    code, text, _ = run_cli([str(study), "--resume", "--storage", str(tmp_path / "typo")],
                            study_env(outputs), 240)
    assert code == 2, text[-3000:]
    assert "no run of study 'nothing-to-resume'" in text and "Traceback" not in text
    assert not (tmp_path / "typo" / "nothing-to-resume").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_absent_cluster_address_fails_with_exit_3_without_hanging(tmp_path: Path) -> None:
    study = write_study(tmp_path, "no-cluster")
    for address in (f"127.0.0.1:{free_port()}", f"ray://127.0.0.1:{free_port()}"):
        code, text, _ = run_cli([str(study), "--address", address], study_env(tmp_path / "o"), 240)
        assert code == 3, text[-3000:]
        assert address in text and "Traceback" not in text
