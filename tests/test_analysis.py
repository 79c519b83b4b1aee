"""The unified post-training analysis: metrics by hand, the artifact set, plots, SHAP, report."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import types
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metadask.analysis import metrics as M
from metadask.analysis.run import expected_files
from metadask.analysis.shap import choose_rows, plan_sample, spread

N_FOLDS, N_ESTIMATORS, SHAP_SAMPLE = 3, 15, 600

CORE_FILES = {
    "training_summary.txt", "training_summary.json", "gene_cv_metrics.csv", "feature_manifest.csv",
    "global_excluded_features.txt", "oof_predictions.parquet", "screening/feature_screening.csv",
    "model/manifest.json",
}


def artifact_set(out: Path) -> set[str]:
    """Every file of a run, relative, without the run's bookkeeping (journal, cache, model internals)."""
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    return {f for f in files if not f.startswith(("journal/", "cache/")) and not (f.startswith("model/") and f != "model/manifest.json")}


def _train(dataset, out, cluster, **kw):
    from distributed import Client

    from metadask.training import train

    with Client(cluster) as c:
        return train(dataset, out, client=c, n_folds=N_FOLDS, n_estimators=N_ESTIMATORS, shap_sample=SHAP_SAMPLE,
                     overwrite=True, **kw)


@pytest.fixture(scope="module")
def run(tiny_dataset, cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis") / "run"
    result = _train(tiny_dataset, out, cluster)
    return types.SimpleNamespace(out=out, result=result, dataset=tiny_dataset)


# -- pure metrics, values computed by hand ---------------------------------------------------------

def test_brier_score_matches_hand_computation_for_binary_and_multiclass():
    assert M.brier_score(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx(0.1)
    proba = np.array([[1.0, 0, 0], [0.5, 0.5, 0]])
    assert M.brier_score(M.one_hot(np.array([0, 1])), proba) == pytest.approx(0.25)


def test_expected_calibration_error_weights_each_bin_gap_by_its_share_of_rows():
    # bins: 0.1 x2 (observed 0) -> 2/4 * 0.1; 0.9 (observed 1) -> 1/4 * 0.1; 0.7 (observed 1) -> 1/4 * 0.3
    ece = M.expected_calibration_error(np.array([0, 0, 1, 1]), np.array([0.1, 0.1, 0.9, 0.7]), n_bins=10)
    assert ece == pytest.approx(0.05 + 0.025 + 0.075)
    t = M.reliability_table(np.array([0, 0, 1, 1]), np.array([0.1, 0.1, 0.9, 0.7]), n_bins=10)
    assert t["count"].tolist() == [0, 2, 0, 0, 0, 0, 0, 1, 0, 1]
    assert M.expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])) == 0.0


def test_calibration_metrics_score_uncalibrated_columns_one_vs_rest():
    y = np.array([0, 1, 2])
    raw = np.array([[0.9, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.1, 0.6]])  # rows need not sum to 1
    m = M.calibration_metrics(y, raw)
    assert m["brier_donor"] == pytest.approx((0.2**2 + 0.2**2 + 0.1**2) / 3)
    assert m["ece_acceptor"] >= 0 and 0 <= m["brier_multiclass"] <= 2


def test_confusion_per_class_report_and_corrections_by_hand():
    y = np.array([0, 1, 2, 1])
    pred = np.array([0, 2, 2, 1])
    assert M.confusion(y, pred).tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    proba = np.eye(3)[pred]
    rep = M.per_class_report(y, proba)
    assert rep["donor"]["precision"] == 1.0 and rep["donor"]["recall"] == 0.5
    assert rep["donor"]["f1"] == pytest.approx(2 / 3)
    assert rep["acceptor"]["precision"] == 0.5 and rep["acceptor"]["support"] == 1
    c = M.corrections(y, base_pred=np.array([0, 0, 2, 1]), meta_pred=np.array([0, 1, 1, 1]))
    assert c == {"corrections": 1, "regressions": 1, "both_correct": 2, "both_wrong": 0, "net": 0}


def _frame():
    return pd.DataFrame({
        "gene": ["A", "A", "A", "B", "B"], "label": [1, 0, 0, 0, 0], "fold": [0, 0, 0, 1, 1],
        "neither_score": [0.6, 0.9, 1.0, 1.0, 1.0], "donor_score": [0.4, 0.1, 0, 0, 0], "acceptor_score": [0.0] * 5,
        "prob_neither": [0.1, 0.4, 1.0, 1.0, 1.0], "prob_donor": [0.9, 0.6, 0, 0, 0], "prob_acceptor": [0.0] * 5,
    })


def test_per_gene_table_counts_base_and_meta_calls_by_hand():
    t = M.per_gene_table(_frame()).set_index("gene")
    a = t.loc["A"]
    assert (a["base_tp"], a["base_fp"], a["base_fn"]) == (0, 0, 1)
    assert (a["meta_tp"], a["meta_fp"], a["meta_fn"]) == (1, 1, 0)
    assert a["base_f1"] == 0.0 and a["meta_f1"] == pytest.approx(2 / 3) and a["delta_f1"] == pytest.approx(2 / 3)
    assert a["corrections"] == 1 and a["regressions"] == 1
    assert a["base_topk_donor"] == 1.0 and a["meta_topk_donor"] == 1.0 and np.isnan(a["meta_topk_acceptor"])
    assert np.isnan(t.loc["B", "meta_f1"]), "a gene with no sites and no calls has no F1"
    assert t.loc["B", "fold"] == 1


def test_evaluation_summary_reports_base_vs_meta_on_the_same_rows():
    from metadask.analysis.evaluation import evaluation_summary

    s = evaluation_summary(_frame())
    sn = s["base_vs_meta"]["splice_vs_neither"]
    assert sn["fp"] == {"base": 0, "meta": 1, "delta": 1}
    assert sn["fn"] == {"base": 1, "meta": 0, "delta": -1}
    assert s["meta"]["confusion_matrix"]["counts"] == [[3, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert "before" not in s["calibration"], "no raw_* columns: nothing to call 'before calibration'"


def test_spread_fills_groups_evenly_without_exceeding_availability():
    assert spread(np.array([5, 1, 0, 3]), 6).tolist() == [3, 1, 0, 2]
    assert spread(np.array([2, 2]), 10).tolist() == [2, 2]
    assert spread(np.array([4, 4, 4]), 0).tolist() == [0, 0, 0]


def test_sample_plan_is_stratified_deterministic_and_within_each_gene(tiny_dataset):
    from metadask.dataset.index import build_gene_index
    from metadask.dataset.source import open_dataset

    index = build_gene_index(open_dataset(tiny_dataset))
    plan = plan_sample(index, 500, seed=3)
    assert plan.n_rows == 500 and plan == plan_sample(index, 500, seed=3)
    counts = plan.class_counts()
    assert counts["donor"] == counts["acceptor"] == 125 and counts["neither"] == 250
    for g, q in plan.quotas.items():
        assert all(q[k] <= index.table.loc[g, f"n_{c}"] for k, c in enumerate(("neither", "donor", "acceptor")))
    parts = plan.partitions(4)
    assert sorted(g for p in parts for g in p) == plan.genes
    genes = np.array(["g1"] * 6 + ["g2"] * 4, dtype=object)
    y = np.array([0, 0, 0, 1, 1, 2, 0, 0, 1, 2])
    rows = choose_rows(genes, y, {"g1": (2, 1, 1), "g2": (1, 1, 0)}, seed=1)
    assert len(rows) == 6 and np.array_equal(rows, choose_rows(genes, y, {"g1": (2, 1, 1), "g2": (1, 1, 0)}, seed=1))
    assert (y[rows] == 2).sum() == 1 and set(genes[rows]) == {"g1", "g2"}


def test_a_failing_analysis_step_becomes_a_note_and_the_rest_runs():
    from metadask.analysis.run import _Steps

    notes: list[str] = []
    steps = _Steps(types.SimpleNamespace(timings={}), notes)

    def boom():
        raise RuntimeError("no contributions")

    assert steps.run("shap", boom) is None
    assert steps.run("report", lambda: 1) == 1
    assert notes == ["Analysis step 'shap' failed: RuntimeError: no contributions"]


# -- a real run ------------------------------------------------------------------------------------------

def test_a_single_strategy_run_writes_exactly_the_documented_artifact_set(run):
    found = artifact_set(run.out)
    expected = CORE_FILES | expected_files()
    assert found == expected, f"missing {sorted(expected - found)}; unexpected {sorted(found - expected)}"
    summary = json.loads((run.out / "training_summary.json").read_text())
    assert summary["notes"] == []
    assert any(a.startswith("shap_analysis/") for a in summary["artifacts"])
    assert "report.html" in " ".join(summary["artifacts"])


def test_expected_file_list_names_every_artifact_of_the_issue_table():
    files = expected_files()
    for name in ("meta_evaluation_summary.json", "base_vs_meta_performance.tsv", "performance_plots/roc_curves_meta.pdf",
                 "performance_plots/pr_curves_meta.pdf", "performance_plots/roc_curves_meta.png",
                 "feature_importance_analysis/feature_importance_combined.csv",
                 "overfitting_analysis/overfitting_summary.json", "report.html", "ensemble_cv_results.csv"):
        assert name in files
    assert not any(f.endswith((".png", ".pdf")) for f in expected_files(skip_plots=True))
    assert not any(f.startswith("shap_analysis/") for f in expected_files(skip_shap=True))


def test_evaluation_files_are_out_of_fold_and_consistent_with_the_oof_predictions(run):
    ev = json.loads((run.out / "meta_evaluation_summary.json").read_text())
    oof = pd.read_parquet(run.out / "oof_predictions.parquet")
    assert ev["n_rows"] == len(oof) and "out-of-fold" in ev["evaluation"]
    cm = np.array(ev["meta"]["confusion_matrix"]["counts"])
    assert cm.sum() == len(oof) and cm.sum(axis=1).tolist() == [int((oof["label"] == k).sum()) for k in range(3)]
    for stage in ("before", "after"):
        assert 0 <= ev["calibration"][stage]["ece_top_label"] < 0.2
    genes = pd.read_csv(run.out / "base_vs_meta_performance.tsv", sep="\t")
    assert len(genes) == oof["gene"].nunique() and genes["n_rows"].sum() == len(oof)
    assert genes["meta_fp"].sum() == ev["meta"]["binary_splice_vs_neither"]["fp"]
    bvm = ev["base_vs_meta"]["class_argmax"]
    assert genes["corrections"].sum() == bvm["corrections"] and genes["regressions"].sum() == bvm["regressions"]
    cv = pd.read_csv(run.out / "ensemble_cv_results.csv")
    assert set(cv["evaluation"]) == {"gene_cv"} and len(cv) == N_FOLDS and set(cv["strategy"]) == {"single"}


def test_png_plots_have_content(run):
    import matplotlib.image as mpimg

    pngs = sorted(run.out.rglob("*.png"))
    assert len(pngs) == len([f for f in expected_files() if f.endswith(".png")])
    for p in pngs:
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, p
        assert float(img[..., :3].var()) > 1e-4, f"{p} is blank"


def test_pdf_plots_are_valid_and_render_to_non_blank_pixels(run, tmp_path):
    import matplotlib.image as mpimg

    pdfs = sorted(run.out.rglob("*.pdf"))
    assert {p.with_suffix(".png").name for p in pdfs} <= {p.name for p in run.out.rglob("*.png")}, "every PDF has a PNG copy"
    for p in pdfs:
        data = p.read_bytes()
        assert data.startswith(b"%PDF-") and b"%%EOF" in data[-1024:] and len(data) > 5_000, p
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm (poppler-utils) not installed: PDFs checked by header and size only")
    roc = run.out / "performance_plots" / "roc_curves_meta.pdf"
    subprocess.run(["pdftoppm", "-png", "-r", "50", "-f", "1", "-l", "1", str(roc), str(tmp_path / "page")], check=True)
    page = next(tmp_path.glob("page*.png"))
    assert float(mpimg.imread(page)[..., :3].var()) > 1e-4


def test_shap_additivity_is_recorded_and_within_float32_tolerance(run):
    s = json.loads((run.out / "shap_analysis" / "shap_summary.json").read_text())
    a = s["additivity"]
    assert a["passed"] and a["max_rel_error"] < 1e-4 and a["max_abs_error"] < 1e-3
    assert s["in_sample"] is True and s["sample"]["rows"] == SHAP_SAMPLE
    assert s["sample"]["class_counts"]["donor"] == SHAP_SAMPLE // 4
    wide = pd.read_csv(run.out / "shap_analysis" / "shap_importance_by_class.csv")
    assert len(wide) == len(run.result.features)
    assert (wide["mean_abs_shap_all_classes"].diff().dropna() <= 1e-12).all(), "sorted by importance"


def test_distributed_shap_equals_contributions_computed_locally_on_the_same_rows(run, cluster):
    from distributed import Client

    from metadask.analysis.shap import compute_shap, draw_sample
    from metadask.dataset.index import build_gene_index
    from metadask.dataset.source import open_dataset

    ds = open_dataset(run.dataset)
    index = build_gene_index(ds)
    model = run.result.model
    with Client(cluster) as c:
        sample = draw_sample(c, ds, index, model.features, model, n_rows=300, seed=5, n_parts=3, contributions=True)
        try:
            res = compute_shap(c, sample, top_n=5)
            parts = c.gather(sample.parts)
        finally:
            sample.release()
    x = np.concatenate([p.x for p in parts])
    local = model.contributions(x)
    expected = np.abs(local).mean(axis=0)[:, :-1]
    got = res.table.pivot(index="feature", columns="cls", values="mean_abs_shap").loc[model.features]
    np.testing.assert_allclose(got[["neither", "donor", "acceptor"]].to_numpy().T, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(local.sum(axis=2), model.predict_margin(x), atol=1e-4)


def test_feature_importance_combines_gain_shap_and_in_sample_permutation(run):
    t = pd.read_csv(run.out / "feature_importance_analysis" / "feature_importance_combined.csv")
    assert {"gain", "weight", "cover", "gain_rank", "mean_abs_shap", "shap_rank", "perm_ap_drop_insample", "perm_rank"} <= set(t)
    assert len(t) == 3 * len(run.result.features)
    for cls, part in t.groupby("cls"):
        assert part["shap_rank"].min() == 1 and part["perm_ap_drop_insample"].notna().sum() >= 1
        top = part.sort_values("shap_rank").iloc[0]
        assert pd.notna(top["perm_ap_drop_insample"]), f"{cls}: the top SHAP feature was permuted"


def test_overfitting_summary_recommends_n_estimators_from_cv_best_iterations(run):
    s = json.loads((run.out / "overfitting_analysis" / "overfitting_summary.json").read_text())
    fits = pd.DataFrame(s["fits"])
    cv = fits[fits["scope"] == "cv"]
    assert len(cv) == 3 * N_FOLDS
    assert s["recommended_n_estimators"] == int(np.ceil((cv["best_iteration"].mean() + 1) * 1.1))
    assert (cv["best_iteration"] < N_ESTIMATORS).all()
    assert np.allclose(cv["gap_at_best"], cv["valid_loss_at_best"] - cv["train_loss_at_best"])


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs: list[dict[str, str]] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs))


def test_report_embeds_every_plot_as_a_data_uri(run):
    html = (run.out / "report.html").read_text()
    parser = _Images()
    parser.feed(html)
    assert parser.imgs and all(i["src"].startswith("data:image/png;base64,") for i in parser.imgs)
    pngs = {p.relative_to(run.out).as_posix(): p for p in run.out.rglob("*.png")}
    assert {i["data-path"] for i in parser.imgs} == set(pngs)
    for i in parser.imgs:
        assert base64.b64decode(i["src"].split(",", 1)[1]) == pngs[i["data-path"]].read_bytes()
    assert "META-MODEL TRAINING SUMMARY" in html and "Evaluation (out-of-fold sampled rows)" in html
    assert "http://" not in html and "https://" not in html, "self-contained: no external resources"


def test_skip_flags_leave_notes_and_no_files_of_those_kinds(run, cluster, tmp_path):
    from distributed import Client

    from metadask.analysis.run import run_analysis
    from metadask.cluster import describe
    from metadask.config import TrainConfig
    from metadask.dataset.index import build_gene_index
    from metadask.dataset.source import open_dataset

    ds = open_dataset(run.dataset)
    config = TrainConfig.from_options(n_folds=N_FOLDS, n_estimators=N_ESTIMATORS, shap_sample=SHAP_SAMPLE,
                                      skip_shap=True, skip_plots=True)
    notes: list[str] = []
    with Client(cluster) as c:
        ctx = types.SimpleNamespace(client=c, dataset=ds, index=build_gene_index(ds), config=config, cluster=describe(c))
        artifacts = run_analysis(run.result, ctx, tmp_path, notes)
    found = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert found == expected_files(skip_shap=True, skip_plots=True)
    assert not any(f.endswith((".png", ".pdf")) or f.startswith("shap_analysis/") for f in found)
    assert any("--skip-plots" in n for n in notes) and any("--skip-shap" in n for n in notes)
    assert not any("failed" in n for n in notes)
    assert not any(a.startswith("shap_analysis/") or a.startswith("performance_plots/") for a in artifacts)
    t = pd.read_csv(tmp_path / "feature_importance_analysis" / "feature_importance_combined.csv")
    assert "mean_abs_shap" not in t and t["perm_ap_drop_insample"].notna().any(), "permutation ranked by gain"
    html = (tmp_path / "report.html").read_text()
    assert "<img" not in html and "--skip-plots" in html


def test_report_renders_in_headless_chromium_with_every_image_loaded(run, tmp_path):
    import matplotlib.image as mpimg

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium)")
    probe = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
             "document.body.setAttribute('data-loaded',i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length);});</script>")
    page = tmp_path / "report.html"
    page.write_text((run.out / "report.html").read_text().replace("</body>", probe + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180).stdout
    n = len(list(run.out.rglob("*.png")))
    assert f'data-loaded="{n}/{n}"' in dom, f"not every image loaded: {dom[:300]!r}"
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *flags, "--window-size=1200,2000", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=180)
    assert shot.exists() and float(mpimg.imread(shot)[..., :3].var()) > 1e-4


def _other_strategies() -> list[str]:
    from metadask.strategies.registry import strategy_names

    return [n for n in strategy_names() if n != "single"]


@pytest.mark.parametrize("strategy", _other_strategies())
def test_every_strategy_writes_the_same_artifact_set(run, tiny_dataset, cluster, tmp_path, strategy):
    _train(tiny_dataset, tmp_path / strategy, cluster, strategy=strategy, max_genes_per_batch=20)
    assert artifact_set(tmp_path / strategy) == artifact_set(run.out)
    notes = json.loads((tmp_path / strategy / "training_summary.json").read_text())["notes"]
    assert not any("failed" in n for n in notes), notes
    shap = json.loads((tmp_path / strategy / "shap_analysis" / "shap_summary.json").read_text())
    assert shap["additivity"]["passed"], shap["additivity"]
