"""Full-body evaluation: every position scored out of fold, thresholds chosen there, stored and used."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.metrics import average_precision_score, f1_score

from metadask.analysis import full_body as fb
from metadask.cli import main

REQUIRED = ("positions", "ap_donor", "ap_acceptor", "f1_at_0.5", "f1_at_threshold", "best_f1", "topk_donor",
            "topk_acceptor", "fp_per_10kb")


def _scores(rng, y, noise):
    p = np.zeros((len(y), 3))
    for k in (1, 2):
        p[:, k] = 1 / (1 + np.exp(-((y == k) * 4 - 6 + rng.normal(0, noise, len(y)))))
    p[:, 0] = np.clip(1 - p[:, 1] - p[:, 2], 0, 1)
    return p


@pytest.fixture(scope="module")
def scored():
    rng = np.random.default_rng(0)
    y = rng.choice(3, size=100_000, p=[0.994, 0.003, 0.003])
    genes = np.array([f"g{i % 200:03d}" for i in range(len(y))])
    return y, _scores(rng, y, 2.0), _scores(rng, y, 1.5), genes


def test_binned_metrics_match_exact_metrics_on_every_row(scored):
    y, base, meta, genes = scored
    m = fb.model_metrics({0: fb.stats_of(y, base, meta, genes)}, 1, threshold=0.5)
    assert m["ap_donor"] == pytest.approx(average_precision_score(y == 1, meta[:, 1]), abs=2e-3)
    assert m["ap_acceptor"] == pytest.approx(average_precision_score(y == 2, meta[:, 2]), abs=2e-3)
    assert m["f1_at_0.5"] == pytest.approx(f1_score(y != 0, meta[:, 1] + meta[:, 2] >= 0.5), abs=1e-12)
    k = int((y == 1).sum())
    top = np.argsort(-meta[:, 1])[:k]
    assert m["topk_donor"] == pytest.approx((y[top] == 1).mean(), abs=2e-3)
    fp = int(((meta[:, 1] + meta[:, 2] >= 0.5) & (y == 0)).sum())
    assert m["fp_per_10kb"] == pytest.approx(1e4 * fp / len(y))
    best = max(f1_score(y != 0, meta[:, 1] + meta[:, 2] >= t) for t in np.linspace(0.05, 0.95, 91))
    assert m["best_f1"] >= best - 2e-3


def test_weighted_statistics_equal_those_of_the_rows_they_stand_for(scored):
    y, base, meta, genes = scored
    rng = np.random.default_rng(1)
    w = np.where(y == 0, rng.integers(1, 4, len(y)), 1)
    expanded = np.repeat(np.arange(len(y)), w)
    a = fb.model_metrics({0: fb.stats_of(y, base, meta, genes, weights=w)}, 1)
    b = fb.model_metrics({0: fb.stats_of(y[expanded], base[expanded], meta[expanded], genes[expanded])}, 1)
    for key in ("positions", "ap_donor", "ap_acceptor", "f1_at_0.5", "best_f1", "topk_donor", "fp_per_10kb"):
        assert a[key] == pytest.approx(b[key], rel=1e-9), key
    assert a["topk_gene_donor"] is None  # per-gene top-k is not defined on weighted rows


def test_the_threshold_of_each_fold_is_chosen_on_the_other_folds_only(scored):
    y, base, meta, genes = scored
    halves = {f: fb.stats_of(y[f::2], base[f::2], meta[f::2], genes[f::2]) for f in (0, 1)}
    # make fold 1's scores useless: its best threshold can no longer be learnt from fold 0
    noisy = np.random.default_rng(5).random((len(y[1::2]), 3))
    halves[1] = fb.stats_of(y[1::2], base[1::2], noisy / noisy.sum(1, keepdims=True), genes[1::2])
    m = fb.model_metrics(halves, 1)
    assert m["threshold_cross_fitted"]
    edge0 = fb.best_edge(halves[1].hist[1, 2])  # fold 0 is called at the threshold chosen on fold 1
    tp, fp, fn = fb._counts_at(halves[0].hist[1, 2], edge0)
    edge1 = fb.best_edge(halves[0].hist[1, 2])
    tp1, fp1, fn1 = fb._counts_at(halves[1].hist[1, 2], edge1)
    assert m["f1_at_threshold"] == pytest.approx(fb._f1(tp + tp1, fp + fp1, fn + fn1))
    assert m["f1_at_threshold"] < m["best_f1"]


def test_the_threshold_edge_of_one_half_is_exactly_probability_one_half():
    assert fb.edge_probability(fb.HALF) == 0.5
    assert fb.threshold_edge(0.5) == fb.HALF
    assert fb.bin_of(np.array([0.5]))[0] == fb.HALF and fb.bin_of(np.array([np.nextafter(0.5, 0)]))[0] == fb.HALF - 1


@pytest.fixture(scope="module")
def full_body_data(tmp_path_factory):
    from metadask.dataset.synthetic import make_dataset

    root = tmp_path_factory.mktemp("fullbody")
    make_dataset(root / "train", 30, seed=3, full_body=True, gene_length=1500, genes_per_file=10)
    make_dataset(root / "heldout", 10, seed=99, full_body=True, gene_length=1500, genes_per_file=5)
    make_dataset(root / "unlabelled", 4, seed=99, full_body=True, gene_length=1500, genes_per_file=5, labels=False)
    return root


@pytest.fixture(scope="module")
def full_body_run(full_body_data, cluster):
    from distributed import Client

    import metadask

    out = full_body_data / "run"
    with Client(cluster) as c:
        result = metadask.train(full_body_data / "train", out, client=c, n_estimators=40, n_folds=3, skip_shap=True,
                                sampling={"easy_rate": 0.02})
    return result, out


def test_training_from_full_bodies_samples_them_and_records_weights(full_body_run):
    result, out = full_body_run
    info = json.loads((out / "sampled" / "sampling.json").read_text())
    assert info["rules"]["easy_rate"] == 0.02 and info["n_rows"] < info["n_positions"] / 5
    assert "weight" in result.oof and result.oof["weight"].min() >= 1.0
    # the weights of every gene stand for its positions: their total is close to the full bodies' rows
    assert result.oof["weight"].sum() == pytest.approx(info["n_positions"], rel=0.1)


def test_full_body_metrics_are_written_with_every_documented_key_for_base_and_meta(full_body_run):
    result, out = full_body_run
    metrics = json.loads((out / "full_body_evaluation" / "metrics.json").read_text())
    for model in ("base", "meta"):
        for key in REQUIRED:
            assert key in metrics[model], (model, key)
    assert set(metrics) >= {"base", "meta", "thresholds"}
    positions = pd.read_csv(out / "sampled" / "master" / "gene_manifest.csv")["n_positions"].sum()
    assert metrics["meta"]["positions"] == positions  # every position, not the sample
    assert (out / "full_body_evaluation" / "curves.csv").is_file()
    assert (out / "full_body_evaluation" / "pr_roc_curves.png").stat().st_size > 1000
    assert "Full-body evaluation" in (out / "report.html").read_text()
    assert "FULL-BODY EVALUATION" in (out / "training_summary.txt").read_text()


def test_every_training_gene_is_scored_by_the_fold_model_that_never_saw_it(full_body_run, full_body_data, cluster):
    """Recompute the per-fold statistics locally from each fold's model and compare with the run's."""
    from distributed import Client

    from metadask.dataset.index import build_gene_index
    from metadask.dataset.rows import gene_set
    from metadask.dataset.source import open_dataset

    result, out = full_body_run
    ds = open_dataset(full_body_data / "train")
    with Client(cluster) as c, c.as_current():
        index = build_gene_index(ds)
        by_fold = fb.score_full_body(ds, index, result.fold_model, {str(g): int(f) for g, f in result.folds.items()}, c)
    assert sorted(by_fold) == sorted(set(result.folds))
    for f, stats in by_fold.items():
        genes = sorted(g for g, k in result.folds.items() if k == f)
        local = fb.score_stats(ds, gene_set(index, genes), result.fold_model(f))
        np.testing.assert_allclose(stats.hist, local.hist)
        leaked = fb.score_stats(ds, gene_set(index, genes), result.model)  # the final model saw these genes
        assert not np.allclose(stats.hist, leaked.hist)


def test_the_stored_threshold_is_the_full_body_one_and_predict_calls_with_it(full_body_run, full_body_data, tmp_path, cluster):
    result, out = full_body_run
    from metadask.models.bundle import load_model

    model = load_model(out / "model")
    metrics = json.loads((out / "full_body_evaluation" / "metrics.json").read_text())
    assert model.thresholds["splice"] == pytest.approx(metrics["thresholds"]["meta_stored"])
    assert model.thresholds["splice"] != 0.5 and "every position" in model.thresholds["source"]
    runner = CliRunner()
    res = runner.invoke(main, ["predict", "--model", str(out / "model"), "--dataset", str(full_body_data / "unlabelled"),
                               "--out", str(tmp_path / "p"), "--scheduler", cluster.scheduler_address])
    assert res.exit_code == 0, res.output
    pred = pd.read_parquet(tmp_path / "p")
    s = pred["prob_donor"] + pred["prob_acceptor"]
    assert ((s >= model.thresholds["splice"]) == (pred["call"] != "neither")).all()


def test_evaluate_scores_held_out_genes_at_the_stored_threshold(full_body_run, full_body_data, tmp_path, cluster):
    result, out = full_body_run
    runner = CliRunner()
    res = runner.invoke(main, ["evaluate", "--model", str(out / "model"), "--dataset", str(full_body_data / "heldout"),
                               "--out-dir", str(tmp_path / "e"), "--scheduler", cluster.scheduler_address])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["meta"]["threshold"] == pytest.approx(result.model.thresholds["splice"])
    assert metrics["base"]["threshold_cross_fitted"] and metrics["meta"]["genes"] == 10
    assert metrics["meta"]["ap_donor"] > metrics["base"]["ap_donor"] - 0.05
    again = runner.invoke(main, ["evaluate", "--model", str(out / "model"), "--dataset", str(full_body_data / "heldout"),
                                 "--out-dir", str(tmp_path / "e"), "--scheduler", cluster.scheduler_address])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_evaluate_on_unlabelled_data_is_a_one_line_error(full_body_run, full_body_data, tmp_path):
    result, out = full_body_run
    res = CliRunner().invoke(main, ["evaluate", "--model", str(out / "model"), "--dataset",
                                    str(full_body_data / "unlabelled"), "--out-dir", str(tmp_path / "e")])
    assert res.exit_code == 2
    assert "label column" in res.output and len(res.output.strip().splitlines()) == 1


def test_a_missing_eval_dataset_fails_before_training(full_body_data, tmp_path):
    res = CliRunner().invoke(main, ["train", "--dataset", str(full_body_data / "train"), "--out-dir", str(tmp_path / "r"),
                                    "--eval-dataset", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "does not exist" in res.output
    assert not (tmp_path / "r").exists()


def test_a_bad_sampling_rule_is_a_one_line_error(full_body_data, tmp_path):
    for rule, match in (("easy_rate=2", "easy_rate"), ("colour=1", "sampling"), ("easy_rate", "RULE=NUMBER")):
        res = CliRunner().invoke(main, ["train", "--dataset", str(full_body_data / "train"),
                                        "--out-dir", str(tmp_path / "r"), "--sampling", rule])
        assert res.exit_code == 2 and match in res.output, res.output


def test_a_mining_round_adds_only_unsampled_negatives_and_keeps_the_weights_summing_to_the_positions(
        full_body_run, full_body_data, tmp_path, cluster):
    from distributed import Client

    from metadask.dataset.index import build_gene_index
    from metadask.dataset.sampling import SamplingRules
    from metadask.dataset.source import open_dataset
    from metadask.mining import MiningRules, mine_round

    result, out = full_body_run
    full = open_dataset(full_body_data / "train")
    sample = open_dataset(out / "sampled")
    rules = SamplingRules(easy_rate=0.02)
    with Client(cluster) as c, c.as_current():
        full_index, sample_index = build_gene_index(full), build_gene_index(sample)
        mine_round(full, full_index, sample, sample_index, result.model, tmp_path / "r1", sampling=rules, seed=42,
                   rules=MiningRules(per_site=1.0, min_per_gene=2, min_score=0.0), round_=1, client=c)
    def read(d, cols):
        return pd.concat([pd.read_parquet(f, columns=cols) for f in sorted(d.glob("*.parquet"))], ignore_index=True)

    before = read(out / "sampled" / "master", ["gene_id", "position", "splice_type", "sample_weight"])
    after = read(tmp_path / "r1" / "master", ["gene_id", "position", "splice_type", "sample_weight", "mined_round"])
    mined = after[after["mined_round"] == 1]
    assert len(mined) > 0 and (mined["splice_type"] == "neither").all() and (mined["sample_weight"] == 1).all()
    key = ["gene_id", "position"]
    assert mined.merge(before, on=key).empty  # only rows the sample had left out
    assert len(after[after["mined_round"] == 0].merge(before, on=key)) == len(before)  # the sample is kept
    sites = before[before["splice_type"] != "neither"].groupby("gene_id").size()
    per_gene = mined.groupby("gene_id").size()
    assert (per_gene <= np.maximum(2, sites.reindex(per_gene.index).fillna(0))).all()
    positions = full_index.table["n_rows"]
    weights = after.groupby("gene_id")["sample_weight"].sum()
    np.testing.assert_allclose(weights.reindex(positions.index), positions, rtol=0.2)
    assert after["sample_weight"].sum() == pytest.approx(before["sample_weight"].sum(), rel=0.02)


def test_hard_negative_rounds_on_a_sampled_dataset_is_a_one_line_error(tiny_dataset, tmp_path):
    res = CliRunner().invoke(main, ["train", "--dataset", str(tiny_dataset), "--out-dir", str(tmp_path / "r"),
                                    "--hard-negative-rounds", "1", "--n-workers", "1"])
    assert res.exit_code == 2 and "full-body" in res.output, res.output


def test_weighted_training_stacks_meta_and_base_in_calibration_and_the_bundle_reproduces_it(full_body_run, full_body_data):
    from metadask.dataset.source import open_dataset
    from metadask.models.bundle import load_model

    result, out = full_body_run
    assert result.details["calibration_method"] == "stacked"
    stacked = [c for c in result.model.calibrators if c.method == "stacked"]
    assert {c.params["base_column"] for c in stacked} >= {"donor_score", "acceptor_score"}
    ds = open_dataset(full_body_data / "train")
    df = ds.read_file(ds.files[0])
    loaded = load_model(out / "model")
    np.testing.assert_allclose(loaded.predict_proba(df), result.model.predict_proba(df), rtol=1e-9, atol=1e-12)
    # the base score moves the calibrated probability: raising it raises p_donor, all else equal
    bumped = df.assign(donor_score=np.minimum(df["donor_score"] * 4 + 0.05, 1.0))
    d = stacked[[c.params["base_column"] for c in stacked].index("donor_score")]
    assert d.params["b"] > 0
    assert (loaded.predict_proba(bumped)[:, 1] >= loaded.predict_proba(df)[:, 1] - 1e-12).mean() > 0.5


def test_a_stacked_calibrator_recovers_a_known_blend_of_meta_and_base():
    from metadask.models.calibration import fit_calibrator

    rng = np.random.default_rng(3)
    zm, zb = rng.normal(0, 2, 20000), rng.normal(0, 2, 20000)
    y = rng.random(20000) < 1 / (1 + np.exp(-(0.6 * zm + 0.4 * zb - 0.5)))
    cal = fit_calibrator(1 / (1 + np.exp(-zm)), y, "stacked", base=1 / (1 + np.exp(-zb)), base_column="donor_score")
    assert cal.params["a"] == pytest.approx(0.6, abs=0.08) and cal.params["b"] == pytest.approx(0.4, abs=0.08)
    assert cal.params["c"] == pytest.approx(-0.5, abs=0.1)
    with pytest.raises(ValueError, match="base score"):
        cal(np.array([0.5]))


def test_unweighted_sampled_training_is_calibrated_and_thresholded_on_the_eval_full_bodies(full_body_data, cluster):
    """The upstream case: sampled rows without weights, judged with --eval-dataset on the genes' full bodies."""
    import pyarrow.parquet as pq
    from distributed import Client

    import metadask
    from metadask.dataset.sampling import SamplingRules, write_sampled_dataset

    root = full_body_data / "upstream"
    with Client(cluster) as c:
        write_sampled_dataset(full_body_data / "train", root / "weighted", SamplingRules(hard_threshold=0.15), 42, client=c)
        (root / "sampled" / "master").mkdir(parents=True)
        for f in sorted((root / "weighted" / "master").glob("*.parquet")):  # drop the weights: an upstream sample
            pq.write_table(pq.read_table(f).drop(["sample_weight"]), root / "sampled" / "master" / f.name)
        result = metadask.train(root / "sampled", root / "run", client=c, n_estimators=30, n_folds=3, analysis=False,
                                eval_dataset=str(full_body_data / "train"))
    assert "weight" not in result.oof
    assert result.details["calibration_method"] == "stacked on full-body positions"
    assert "stacked" in {c.method for c in result.model.calibrators}
    assert sorted(result.fold_calibrators) == sorted(set(result.folds))
    metrics = json.loads((root / "run" / "full_body_evaluation" / "metrics.json").read_text())
    assert metrics["meta"]["genes"] == 30 and "every position" in result.model.thresholds["source"]
    p = result.oof[["prob_neither", "prob_donor", "prob_acceptor"]].to_numpy()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
