"""The benchmarks run at tiny sizes and write valid result JSON and a summary (no timing assertions).

The Ray-study benchmarks that start several studies each (marker ``bench``: peer, scaling,
fixed_cost, platform_overhead + concurrency_scaling; about 6 minutes on 2 cores) are left out of
``make test`` to keep it within its time budget; ``make test-bench`` runs them as tests and
``make bench`` at full size. stage2_throughput stays in ``make test``: it is the one that runs a
stage-2 search through the study driver.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from benchmarks import result
from benchmarks.bench_gpu import bf16_peak
from benchmarks.run import main

REQUIRED = {"name", "goal", "ratio", "passed_goal", "details", "machine", "command"}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _environment_restored():
    """The in-process peer (Ray's MLflowLoggerCallback) exports MLFLOW_TRACKING_URI; later tests
    read that variable as the default tracking URI, so each benchmark test gets the environment back."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _check(out, name: str) -> dict:
    data = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
    assert REQUIRED <= set(data), f"{name}.json lacks {REQUIRED - set(data)}"
    assert data["name"] == name
    assert "error" not in data["details"], data["details"].get("traceback")
    assert data["machine"]["cpu_cores"] >= 1 and data["machine"]["torch"] == torch.__version__
    return data


def test_goal_is_met_only_on_the_right_side_and_unknown_without_a_value():
    assert result("x", goal_op=">=", goal_value=0.9, value=0.95, unit="x", measure="m", details={})["passed_goal"]
    assert not result("x", goal_op=">=", goal_value=0.9, value=0.8, unit="x", measure="m", details={})["passed_goal"]
    assert result("x", goal_op="<=", goal_value=1.15, value=1.1, unit="x", measure="m", details={})["passed_goal"]
    assert result("x", goal_op="<=", goal_value=10, value=None, unit="s", measure="m", details={})["passed_goal"] is None
    with pytest.raises(ValueError, match="goal_op"):
        result("x", goal_op="<", goal_value=1, value=1, unit="x", measure="m", details={})


def test_bf16_peak_prefers_the_most_specific_device_name():
    assert bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert bf16_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert bf16_peak("Some Future GPU") is None


def test_quick_in_process_benchmarks_write_valid_json_and_a_summary(tmp_path):
    out = tmp_path / "results"
    names = ["trainable_throughput", "backdoor_vs_stage1", "linear_probe_feature_cache", "gpu_vit_b16_adaptformer"]
    argv = ["--quick", "--skip-demo", "--out", str(out), "--workdir", str(tmp_path / "work")]
    assert main(argv + [a for n in names for a in ("--only", n)]) == 0
    for name in names:
        data = _check(out, name)
        assert data["quick"] is True
    throughput = _check(out, "trainable_throughput")
    assert throughput["ratio"] > 0 and math.isfinite(throughput["ratio"])
    assert throughput["passed_goal"] == (throughput["ratio"] >= 0.9)
    gpu = _check(out, "gpu_vit_b16_adaptformer")
    if not torch.cuda.is_available():
        assert gpu["ratio"] is None and "no GPU available" in gpu["details"]["status"]
    assert gpu["details"]["flops_per_image_fwd_bwd (FlopCounterMode)"] > 0
    summary = (out / "SUMMARY.md").read_text(encoding="utf-8")
    for name in names:
        assert f"`{name}`" in summary
    assert "demo_wall_time" not in summary  # --skip-demo


@pytest.mark.slow
@pytest.mark.bench
def test_quick_ray_benchmarks_break_down_the_study_wall_time(tmp_path):
    out = tmp_path / "results"
    argv = ["--quick", "--out", str(out), "--workdir", str(tmp_path / "work"),
            "--only", "platform_overhead", "--only", "concurrency_scaling"]
    assert main(argv) == 0
    overhead = _check(out, "platform_overhead")["details"]
    assert overhead["failed_trials"] == 0 and overhead["trials"] == 4
    assert 0 < overhead["sum_trial_compute_s"] < overhead["study_wall_s"] * overhead["concurrency"]
    scaling = _check(out, "concurrency_scaling")
    assert scaling["ratio"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param("peer", marks=pytest.mark.bench), "stage2_throughput",
                                  pytest.param("scaling", marks=pytest.mark.bench),
                                  pytest.param("fixed_cost", marks=pytest.mark.bench)])
def test_quick_study_benchmarks_write_their_measures(tmp_path, name):
    out = tmp_path / "results"
    assert main(["--quick", "--out", str(out), "--workdir", str(tmp_path / "work"), "--only", name]) == 0
    data = _check(out, name)
    details = data["details"]
    assert data["ratio"] > 0 and math.isfinite(data["ratio"])
    assert data["passed_goal"] == {"peer": data["ratio"] <= 0.8, "stage2_throughput": data["ratio"] >= 0.8,
                                   "scaling": data["ratio"] <= 1.1, "fixed_cost": data["ratio"] <= 1.0}[name]
    assert data["machine"]["load_average_before"] is not None
    if name == "peer":
        assert details["trials"]["stage1"]["ours"] == details["trials"]["stage1"]["peer"]
    elif name == "stage2_throughput":
        assert details["failed"] == 0 and details["stage2_trials"] == 6
        assert sum(details["trials_per_worker_pid"]) == details["all_trials"]
    elif name == "scaling":
        runs = details["runs"]
        assert [r["trials"] for r in runs.values()] == [12, 24]
        assert all(r["tune_experiment_state_mb"] > 0 and r["mlflow_db_mb"] > 0 for r in runs.values())
        assert all(r["tune_snapshots"]["state_file_kb_per_trial"] > 0 for r in runs.values())
        # Tune alone, the same trials reporting packed (now) and flat (before): sizes, not times
        sweep = details["tune_state_alone"]
        assert sweep["tune_keys"]["packed (tune_result)"] == 3 < sweep["tune_keys"]["flat (every metric a key)"]
        packed, flat = (sweep["runs"][k]["24"]["state_file_kb_per_trial"]
                        for k in ("packed (tune_result)", "flat (every metric a key)"))
        assert 0 < packed < flat / 3
    else:
        assert all(v > 0 for v in details["fixed_seconds_median"].values())
    assert f"`{name}`" in (out / "SUMMARY.md").read_text(encoding="utf-8")
