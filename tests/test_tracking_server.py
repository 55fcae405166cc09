"""A real tracking server for clusters: MLflow on PostgreSQL with an S3-compatible artifact store,
and a 2-node loopback Ray cluster whose worker node is killed mid-study.

PostgreSQL is Debian's package (``tests/install_postgres.sh``, run by ``.ci/run``); the artifact
store is moto's S3 server (the ``dev`` extra). Everything listens on 127.0.0.1; the database has a
generated password, handed to MLflow as ``PGPASSWORD`` (never on a command line). Skipped when
PostgreSQL or moto is missing.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from test_faults import (TOY_STUDY, _pg_bin, LoopbackCluster, epochs_of, free_port, kill_tree, start_cli,
                         study_env, trial_results, wait_for, write_study)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc").is_dir(), reason="Linux only")]

BUCKET = "ltbias-artifacts"


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run as the 'postgres' user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _wait_http(url: str, what: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - our own server
                return resp.status < 500
        except OSError:
            return False

    wait_for(what, answers, timeout, proc, log, every=1.0)


@pytest.fixture(scope="module")
def tracking_server():
    """(tracking URI, S3 endpoint) of an MLflow server on PostgreSQL with moto S3 artifacts."""
    pg = _pg_bin()
    if pg is None:
        pytest.skip("PostgreSQL is not installed (bash tests/install_postgres.sh)")
    try:
        import boto3
        import moto  # noqa: F401
        import psycopg2  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"{exc.name} is missing (pip install -e '.[dev]')")
    root = Path(tempfile.mkdtemp(prefix="ltbias-pg-", dir="/tmp"))  # short, readable by postgres
    data, logs = root / "data", root / "logs"
    logs.mkdir()
    password = secrets.token_hex(16)
    (root / "pw").write_text(password)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(root / "pw", "postgres")
    procs: list[subprocess.Popen] = []
    pg_port, s3_port, mlflow_port = free_port(), free_port(), free_port()
    try:
        subprocess.run(_as_postgres([str(pg / "initdb"), "-D", str(data), "-U", "postgres",
                                     "--auth=scram-sha-256", f"--pwfile={root / 'pw'}"]),
                       check=True, capture_output=True, timeout=300)
        subprocess.run(_as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-w", "-t", "120",
                                     "-l", str(root / "postgres.log"), "-o",
                                     f"-h 127.0.0.1 -p {pg_port} -k {root}", "start"]),
                       check=True, capture_output=True, timeout=300)
        env = {**os.environ, "PGPASSWORD": password}
        subprocess.run([str(pg / "createdb") if (pg / "createdb").exists() else "createdb",
                        "-h", "127.0.0.1", "-p", str(pg_port), "-U", "postgres", "mlflow"],
                       check=True, capture_output=True, env=env, timeout=120)
        s3_log = logs / "moto.log"
        with open(s3_log, "wb") as fh:
            procs.append(subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                           "-p", str(s3_port)], stdout=fh, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        endpoint = f"http://127.0.0.1:{s3_port}"
        _wait_http(endpoint, "the S3 server", procs[-1], s3_log)
        s3_env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": endpoint}
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                     aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        mlflow_log = logs / "mlflow.log"
        with open(mlflow_log, "wb") as fh:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                 "--port", str(mlflow_port), "--workers", "1",
                 "--backend-store-uri", f"postgresql+psycopg2://postgres@127.0.0.1:{pg_port}/mlflow",
                 "--artifacts-destination", f"s3://{BUCKET}/mlflow", "--serve-artifacts"],
                env={**env, **s3_env}, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True))
        uri = f"http://127.0.0.1:{mlflow_port}"
        _wait_http(f"{uri}/health", "the MLflow server", procs[-1], mlflow_log, timeout=300)
        yield uri, endpoint
    finally:
        for proc in reversed(procs):
            kill_tree(proc.pid, 15)
            kill_tree(proc.pid)
        if data.exists():
            subprocess.run(_as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                           capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(900)
def test_worker_node_killed_with_mlflow_on_postgres_and_s3_loses_and_duplicates_nothing(
        tmp_path: Path, tracking_server) -> None:
    import boto3
    from mlflow import MlflowClient

    uri, endpoint = tracking_server
    seeds = [0, 1, 2, 3]
    study = write_study(tmp_path, "pg-node-kill", seeds=seeds)
    outputs = tmp_path / "outputs"
    experiment = outputs / "ray_results" / "pg-node-kill"
    cluster = LoopbackCluster(tmp_path)
    try:
        cluster.start()
        log = tmp_path / "driver.log"
        driver = start_cli([str(study), "--address", cluster.address, "--tracking-uri", uri],
                           study_env(outputs), log)

        def worker_trial_mid_run() -> str | None:
            pids = cluster.worker_pids()
            for trial_id, rows in trial_results(experiment).items():
                last = rows[-1]
                if last.get("pid") in pids and not last.get("done") and \
                        2 <= last.get("epoch", 0) <= TOY_STUDY["finetune"]["epochs"] - 3:
                    return trial_id
            return None

        victim = wait_for("a trial checkpointed on the worker node", worker_trial_mid_run, 400,
                          driver, log, every=0.1)
        cluster.kill("worker")
        code = driver.wait(timeout=600)
        assert code == 0, log.read_text(errors="replace")[-4000:]
    finally:
        cluster.stop()

    results = trial_results(experiment)
    assert len(results) == len(seeds)  # nothing lost
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("pg-node-kill")
    runs = client.search_runs([exp.experiment_id], "tags.`ltbias.level` = 'trial'")
    assert sorted(r.data.tags["ltbias.trial_id"] for r in runs) == sorted(results)  # one run each
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:  # nothing logged twice, although the victim's trial ran twice
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")]
        assert steps == list(range(1, TOY_STUDY["finetune"]["epochs"] + 1)), (run.info.run_id, steps)
    victim_run = next(r for r in runs if r.data.tags["ltbias.trial_id"] == victim)
    assert int(victim_run.data.tags.get("ltbias.retries", 0)) >= 1
    victim_epochs = epochs_of(results[victim])
    assert max(victim_epochs) == TOY_STUDY["finetune"]["epochs"]
    # Resumed from its last checkpoint: epoch 1 ran once, and no epoch ran more than twice (only
    # the ones after the last checkpoint that reached storage can repeat).
    assert victim_epochs.count(1) == 1, victim_epochs
    assert max(victim_epochs.count(e) for e in set(victim_epochs)) <= 2, victim_epochs
    # The artifacts went through the server into the S3 bucket.
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert any(k.endswith("per_class.parquet") for k in keys), keys[:10]
    assert any(victim_run.info.run_id in k for k in keys)
