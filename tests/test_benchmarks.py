"""Every benchmark case smoke-runs at its ``--tiny`` size, so none can rot.

The default suite runs every case (about 2.5 minutes on two quiet cores); memory_model and
out_of_core also have smoke tests of their own (tests/test_auto.py, tests/test_out_of_core.py).

Each case's ``main(["--tiny"])`` runs for real (LocalClusters, XGBoost, parquet); results go
to a temporary directory instead of ``benchmarks/results`` and synthetic datasets to a cache
of this test session. A case listed in ``benchmarks.__main__.CASES`` without a module or a
``--tiny`` option fails.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json

import pytest

from benchmarks.__main__ import CASES

COMMON_KEYS = {"benchmark", "date", "machine"}
EXPECTED_KEYS = {
    "orchestration": {"metadask_seconds", "bare_seconds", "ratio", "same_trees", "worker_peak_rss"},
    "real_data": {"options", "targets", "datasets"},
    "scale_out": {"one_worker_seconds", "two_worker_seconds", "speedup", "identical_predictions"},
    "out_of_core": {"matrix_to_memory_ratio", "worker_peak_rss", "checks"},
    "memory_model": {"results", "worst_abs_error"},
    "shap_speed": {"distributed_compute_seconds", "max_abs_difference"},
    "inference": {"rows", "n_estimators", "models", "frame_to_matrix_rows_per_s", "scan"},
    "growth": {"sizes", "strategies", "runs"},
    "shared_reads": {"median_seconds", "worker_peak_rss", "speedup", "identical_boosters"},
    "ensemble_scoring": {"seconds", "ratio", "reload_ratio", "max_abs_margin_difference"},
    "full_body": {"options", "targets", "real", "synthetic"},
    "read_path": {"features", "cases"},
    "client_memory": {"options", "runs", "ratios"},
    "tree_settings": {"rows", "features", "variants"},
}


@pytest.fixture(autouse=True)
def bench_dirs(monkeypatch, tmp_path, tmp_path_factory):
    """Results in this test's directory; synthetic datasets cached once per session."""
    import benchmarks.common as common

    cache = tmp_path_factory.getbasetemp() / "bench-cache"
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(common, "CACHE", cache)
    return tmp_path / "results"


def load_case(case: str):
    assert importlib.util.find_spec(f"benchmarks.{case}") is not None, f"benchmarks/{case}.py is missing"
    module = importlib.import_module(f"benchmarks.{case}")
    assert "--tiny" in inspect.getsource(module), f"benchmark case '{case}' has no --tiny option"
    return module


def written(results_dir, case: str) -> dict:
    path = results_dir / f"{case}_tiny.json"
    assert path.exists(), f"{case} --tiny wrote no {path.name}"
    return json.loads(path.read_text())


# -- closer checks of the cases of the real-data issue (on the JSON the smoke run wrote) ----

def check_real_data(data: dict) -> None:
    (name, entry), = data["datasets"].items()
    assert entry["status"] == "ok"
    runs = entry["strategies"]
    assert set(runs) == {"single", "batch-ensemble"}
    for strategy, r in runs.items():
        assert r["status"] == "ok", f"{strategy}: {r['status']}"
        for key in ("wall_seconds", "worker_peak_rss", "macro_f1", "ap_donor", "ap_acceptor", "meta_binary_f1",
                    "meta_binary_ap", "meta_topk_donor", "meta_topk_acceptor", "base_binary_f1", "base_ap_donor",
                    "base_topk_acceptor"):
            assert key in r, f"{strategy} lacks {key}"
        assert r["worker_peak_rss"] > 0
        assert r["n_rows"] == runs["single"]["n_rows"]
        assert r["base_binary_f1"] == runs["single"]["base_binary_f1"]  # the same rows, the same base scores
    assert runs["batch-ensemble"]["n_batches"] >= 2


def check_inference(data: dict) -> None:
    models = data["models"]
    assert set(models) == {"single", "ensemble K=2"}
    assert models["ensemble K=2"]["members"] == 2
    assert models["ensemble K=2"]["trees"] == 2 * models["single"]["trees"]
    for m in models.values():
        assert m["in_process_rows_per_s"] > 0 and m["cluster_rows_per_s"] > 0
    scan = data["scan"]  # predict_dataset on unlabelled scans 10x apart vs bare inplace_predict
    small, large = scan["runs"]
    assert large["rows"] == 10 * small["rows"]
    assert scan["bare_inplace_rows_per_s"] > 0 and scan["ratio_bare_over_predict"] > 0
    assert all(r["client_peak_rss"] > 0 for r in scan["runs"])


def check_growth(data: dict) -> None:
    runs = {(r["genes"], r["strategy"]): r for r in data["runs"]}  # the file lists them sorted by (genes, strategy)
    assert sorted(runs) == [(20, "batch-ensemble"), (20, "single"), (40, "batch-ensemble"), (40, "single")]
    for r in runs.values():
        assert r["status"] == "ok", r["status"]
        assert r["wall_seconds"] > 0 and r["worker_peak_rss"] > 0
    assert runs[20, "batch-ensemble"]["n_batches"] == 1 and runs[40, "batch-ensemble"]["n_batches"] == 2  # <= 20 genes per batch


def check_shared_reads(data: dict) -> None:
    assert data["identical_boosters"] is True
    assert set(data["median_seconds"]) == {"per-class", "shared"}
    assert all(v > 0 for v in data["median_seconds"].values()) and all(v > 0 for v in data["worker_peak_rss"].values())
    assert len(data["trees"]) == 3


def check_ensemble_scoring(data: dict) -> None:
    assert data["max_abs_margin_difference"] < 1e-9  # scoring gives bare inplace_predict's margins
    assert all(data["seconds"][k] > 0 for k in ("scoring", "bare", "read")) and data["ratio"] > 0


def check_full_body(data: dict) -> None:
    rows = {r["workflow"]: r for r in data["synthetic"]["rows"]}
    assert set(rows) == {"base", "library", "mining"}
    for r in rows.values():
        for key in ("f1_at_0.5", "f1_at_threshold", "best_f1", "ap_donor", "ap_acceptor", "topk_donor", "topk_acceptor",
                    "fp_per_10kb"):
            assert 0 <= r[key] <= (1 if key != "fp_per_10kb" else 1e4), (r["workflow"], key)
    assert rows["library"]["client_peak_rss"] > 0 and rows["library"]["worker_peak_rss"] > 0
    assert rows["library"]["positions"] == rows["mining"]["positions"]  # both judged on every position
    pred = data["synthetic"]["prediction"]
    assert pred["rows"] == rows["library"]["positions"] and pred["ratio"] > 0


def check_read_path(data: dict) -> None:
    for case in data["cases"].values():
        assert case["identical_matrix"] is True  # the one-pass read gives the earlier read's matrix, bit for bit
        assert case["rows"] > 0 and all(v > 0 for v in case["median_cpu_seconds"].values())
    assert any(case["files"] > 1 for case in data["cases"].values())  # a gene set across files is measured


def check_shap_speed(data: dict) -> None:
    assert data["max_abs_difference"] < 1e-4 and data["additivity"]["passed"]


def check_analysis_overhead(data: dict) -> None:
    assert data["analysis_seconds"] > 0 and data["training_seconds"] > 0


def check_scale_out(data: dict) -> None:
    assert data["identical_predictions"] is True and data["n_batches"] == 3 and data["speedup"] > 0


def check_client_memory(data: dict) -> None:
    (run,) = data["runs"]
    steps = run["steps"]
    assert run["rows"] == 20_000 and run["variant"] == "current" and run["calibration"] == "platt"
    assert run["peak"] >= max(s["peak"] for s in steps.values()) > 0 and steps["assemble"]["frame_bytes"] > 0
    assert abs(sum(run["prob_mean"]) - 1) < 1e-5 and 0 < run["meta_binary_f1"] <= 1 and run["file_bytes"] > 0


def check_tree_settings(data: dict) -> None:
    first, *others = data["variants"].values()
    assert first["settings"] == {} and first["cpu_ratio"] == 1.0 and set(first["quality_delta"].values()) == {0.0}
    assert {"max_bin": 64} in [v["settings"] for v in others] and all(v["trees"] > 0 for v in data["variants"].values())
    for v in data["variants"].values():
        assert v["cpu_seconds"] > 0 and all(0 < q <= 1 for q in v["quality"].values())


CHECKS = {"tree_settings": check_tree_settings, "client_memory": check_client_memory, "read_path": check_read_path, "shap_speed": check_shap_speed, "analysis_overhead": check_analysis_overhead,
          "scale_out": check_scale_out, "real_data": check_real_data, "full_body": check_full_body, "inference": check_inference, "growth": check_growth,
          "shared_reads": check_shared_reads, "ensemble_scoring": check_ensemble_scoring}


# Every case runs in the default suite: --tiny wall times on the quiet 2-core machine (2026-12-03) sum to
# ~2.5 min (cpu_profile 26 s, growth 18 s, analysis_overhead 11 s, scale_out 11 s, full_body 10 s, real_data 9 s,
# orchestration 9 s, final_model 7 s, out_of_core 7 s, inference 6 s, memory_model 4 s, ensemble_scoring 3 s, the
# rest 1-5 s each). Under heavy load (load average ~17) the same took ~620 s.
@pytest.mark.parametrize("case", CASES)
def test_benchmark_case_runs_at_tiny_size_and_writes_its_json(case, bench_dirs):
    module = load_case(case)
    payload = module.main(["--tiny"])
    data = written(bench_dirs, case)
    missing = (COMMON_KEYS | EXPECTED_KEYS.get(case, set())) - set(data)
    assert not missing, f"{case}_tiny.json lacks {sorted(missing)}"
    assert data["benchmark"] == f"{case}_tiny"
    if isinstance(payload, dict):
        assert set(EXPECTED_KEYS.get(case, set())) <= set(payload)
    if case in CHECKS:
        CHECKS[case](data)


def test_real_data_skips_a_missing_dataset_with_a_clear_message(bench_dirs):
    load_case("real_data")
    from benchmarks.real_data import main

    payload = main(["--datasets", "no_such_dataset", "--name", "real_data_missing"])
    status = payload["datasets"]["no_such_dataset"]["status"]
    assert status.startswith("skipped") and "not found" in status
    assert (bench_dirs / "real_data_missing.json").exists()


def test_an_unknown_strategy_is_reported_as_not_available():
    load_case("real_data")
    from benchmarks.real_data import comparison_table, strategy_available

    assert strategy_available("single") is None
    why = strategy_available("no-such-strategy")
    assert why is not None and why.startswith("not available")
    assert "not available" in comparison_table("x", {"no-such-strategy": {"status": why}})
