"""The batch ensemble: batches, the ensemble model, honest ensemble CV, determinism, quality."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from metadask.dataset.schema import LABELS
from metadask.errors import TrainingError
from metadask.models.boosted import FitOutput, booster_to_bytes
from metadask.models.bundle import load_model, save_model
from metadask.models.ensemble import EnsembleModel, combine_margins, fit_weights
from metadask.strategies.batch_ensemble import pack_batches

OPTS = {"n_folds": 3, "n_estimators": 30, "analysis": False, "seed": 3, "max_genes_per_batch": 15}


# -- batches ---------------------------------------------------------------------------------

def _sizes(n: int, seed: int = 0) -> pd.Series:
    rng = np.random.default_rng(seed)
    return pd.Series(rng.integers(400, 1300, n), index=[f"G{i:04d}" for i in range(n)])


def test_batches_are_deterministic_disjoint_capped_and_balanced():
    sizes = _sizes(103)
    a = pack_batches(sizes, 20, seed=5)
    b = pack_batches(sizes.sample(frac=1.0, random_state=1), 20, seed=5)  # input order is irrelevant
    assert a.equals(b)
    assert a.index.is_unique and set(a.index) == set(sizes.index)  # every gene in exactly one batch
    assert a.max() + 1 == math.ceil(103 / 20)
    counts = a.value_counts()
    assert counts.max() <= 20
    totals = sizes.groupby(a).sum()
    assert totals.max() - totals.min() <= sizes.max()  # balanced by rows within one gene
    assert not pack_batches(sizes, 20, seed=6).equals(a)  # the seed matters


def test_one_batch_when_the_genes_fit_in_one():
    assert pack_batches(_sizes(7), 1200, seed=0).eq(0).all()


# -- the ensemble model (no cluster) -----------------------------------------------------------

def _member(x: np.ndarray, y: np.ndarray, seed: int) -> list[xgb.Booster]:
    out = []
    for k in range(3):
        d = xgb.DMatrix(x, label=(y == k).astype(np.float32))
        out.append(xgb.train({"objective": "binary:logistic", "max_depth": 3, "seed": seed, "nthread": 1}, d, 8))
    return out


@pytest.fixture(scope="module")
def toy_ensemble():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    y = np.where(x[:, 0] > 0.8, 1, np.where(x[:, 1] > 0.8, 2, 0))
    members = [_member(x[i::3], y[i::3], i) for i in range(3)]
    weights = np.array([[1.0, 2.0, 1.0], [1.0, 1.0, 3.0], [2.0, 1.0, 1.0]])
    return EnsembleModel(members, weights, [f"f{i}" for i in range(5)], method="weighted"), x


def test_ensemble_margin_is_the_weighted_mean_of_member_margins(toy_ensemble):
    model, x = toy_ensemble
    mm = model.member_margins(x)
    w = model.weights
    assert np.allclose(w.sum(axis=0), 1.0)
    expected = sum(w[j][None, :] * mm[j] for j in range(3))
    assert np.allclose(model.predict_margin(x), expected)
    # restricting the vote renormalises the weights over the members used
    sub = model.predict_margin(x, members=[0, 2])
    w02 = w[[0, 2]] / w[[0, 2]].sum(axis=0)
    assert np.allclose(sub, w02[0] * mm[0] + w02[1] * mm[2])
    assert np.allclose(combine_margins(mm[[1]], np.ones((1, 3))), mm[1])


def test_ensemble_contributions_are_additive(toy_ensemble):
    model, x = toy_ensemble
    contrib = model.contributions(x[:50])
    assert contrib.shape == (50, 3, 6)
    assert np.allclose(contrib.sum(axis=2), model.predict_margin(x[:50]), atol=1e-4)


def test_ensemble_importance_is_the_weighted_mean_of_members(toy_ensemble):
    model, _ = toy_ensemble
    imp = model.importance()
    assert list(imp.columns) == ["cls", "feature", "gain", "weight", "cover"]
    assert len(imp) == 3 * 5
    from metadask.models.boosted import booster_importance

    per = [booster_importance(m, model.features) for m in model.members]
    donor = imp[imp["cls"] == "donor"]["gain"].to_numpy()
    expected = sum(model.weights[j, 1] * per[j][per[j]["cls"] == "donor"]["gain"].to_numpy() for j in range(3))
    assert np.allclose(donor, expected)


def test_ensemble_bundle_round_trip_predicts_identically(toy_ensemble, tmp_path):
    model, x = toy_ensemble
    model.info = {"genes": 300}
    save_model(model, tmp_path / "model", strategy="batch-ensemble")
    files = sorted(p.relative_to(tmp_path / "model").as_posix() for p in (tmp_path / "model").rglob("*.ubj"))
    assert files == sorted(f"members/{j}/{c}.ubj" for j in range(3) for c in LABELS)
    loaded = load_model(tmp_path / "model")
    assert isinstance(loaded, EnsembleModel) and loaded.n_members == 3 and loaded.method == "weighted"
    assert np.array_equal(loaded.weights, model.weights)
    assert np.array_equal(loaded.predict_proba(x), model.predict_proba(x))
    assert "3 members" in loaded.describe() and "weighted" in loaded.describe()


def test_ensemble_rejects_bad_weights(toy_ensemble):
    model, _ = toy_ensemble
    with pytest.raises(ValueError, match="weight rows"):
        EnsembleModel(model.members, np.ones((2, 3)), model.features)
    with pytest.raises(ValueError, match="non-negative"):
        EnsembleModel(model.members, -np.ones((3, 3)), model.features)


def test_member_weights_follow_validation_loss_or_are_equal_for_voting():
    def fit(loss: float) -> FitOutput:
        return FitOutput(booster=b"", best_iteration=1, n_trees=2, seconds=0.0, rows=1,
                         history={"valid": [0.9, loss, 0.8]})

    fits = [[fit(0.1)] * 3, [fit(0.3)] * 3]
    w = fit_weights(fits, "weighted")
    assert np.allclose(w[:, 0], [0.75, 0.25])  # 1/0.1 : 1/0.3
    assert np.allclose(fit_weights(fits, "voting"), 0.5)


# -- training --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ensemble_run(cluster, tiny_dataset, tmp_path_factory):
    import metadask
    from distributed import Client

    out = tmp_path_factory.mktemp("be") / "run"
    with Client(cluster) as client:
        result = metadask.train(tiny_dataset, out, client=client, strategy="batch-ensemble", **OPTS)
    return result


def test_batch_ensemble_scores_each_gene_only_with_members_that_never_saw_it(ensemble_run, tiny_dataset):
    from metadask.dataset import build_gene_index, open_dataset
    from metadask.strategies.tasks import gene_set, read_rows

    r = ensemble_run
    batches = {int(b): genes for b, genes in r.details["batches"].items()}
    assert len(batches) == math.ceil(40 / 15) == r.details["n_batches"]
    assert r.details["ensemble_cv_mode"] == "leave-batch-out"
    gene_batch = {g: b for b, genes in batches.items() for g in genes}
    assert len(gene_batch) == 40  # disjoint and complete
    assert (r.oof["fold"] == r.oof["gene"].map(gene_batch)).all()  # folds are the batches
    assert r.folds.to_dict() == gene_batch

    model = load_model(f"{r.out_dir}/model")
    assert isinstance(model, EnsembleModel) and model.n_members == len(batches)
    ds = open_dataset(tiny_dataset)
    index = build_gene_index(ds)
    for b, genes in batches.items():
        x, _, meta = read_rows(ds, gene_set(index, genes), model.features)
        others = [j for j in batches if j != b]
        expected = model.predict_margin(x, members=others)
        with_own = model.predict_margin(x)
        got = r.oof[r.oof["fold"] == b].sort_values(["gene", "position"], kind="stable")
        order = meta.assign(i=np.arange(len(meta))).sort_values(["gene_id", "position"], kind="stable")["i"].to_numpy()
        margins = got[[f"margin_{c}" for c in LABELS]].to_numpy()
        assert np.allclose(margins, expected[order], atol=1e-5)
        assert not np.allclose(margins, with_own[order], atol=1e-3)  # its own member would change it


def test_batch_ensemble_records_its_plan_and_per_fold_figures(ensemble_run):
    r = ensemble_run
    assert r.details["strategy_label"] == "Batch Ensemble (15 genes/batch)"
    assert r.reason == "requested with --strategy batch-ensemble"
    cv = r.details["ensemble_cv_results"]
    assert list(cv["fold"]) == [0, 1, 2]
    assert (cv["members_used"] == 2).all()
    assert cv["n_rows"].sum() == len(r.oof)
    assert {"accuracy", "macro_f1", "meta_binary_f1", "base_binary_f1"} <= set(cv.columns)
    fits = r.fits
    assert len(fits) == 9 and set(fits["scope"]) == {"member"}
    assert sorted(fits["batch"].unique()) == [0, 1, 2]
    weights = np.array([r.details["member_weights"][c] for c in LABELS]).T
    assert np.allclose(weights.sum(axis=0), 1.0) and np.allclose(weights, r.model.weights, atol=1e-6)
    text = open(f"{r.out_dir}/training_summary.txt").read()
    assert "Training Strategy: Batch Ensemble (15 genes/batch)" in text


def test_batch_ensemble_is_deterministic_on_one_or_two_workers(ensemble_run, tiny_dataset, tmp_path):
    import metadask
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0", env={"OMP_WAIT_POLICY": "PASSIVE"}) as c1, \
            Client(c1) as client:
        again = metadask.train(tiny_dataset, tmp_path / "one-worker", client=client, strategy="batch-ensemble", **OPTS)
    key = ["gene", "position"]
    a = ensemble_run.oof.sort_values(key, kind="stable").reset_index(drop=True)
    b = again.oof.sort_values(key, kind="stable").reset_index(drop=True)
    cols = [f"margin_{c}" for c in LABELS] + ["prob_neither", "prob_donor", "prob_acceptor", "fold"]
    pd.testing.assert_frame_equal(a[key + cols], b[key + cols], check_exact=True)
    assert again.details["batches"] == ensemble_run.details["batches"]


def test_batch_ensemble_macro_f1_is_close_to_the_single_model(ensemble_run, client, tiny_dataset, tmp_path):
    import metadask

    single = metadask.train(tiny_dataset, tmp_path / "single", client=client, strategy="single",
                            **{k: v for k, v in OPTS.items() if k != "max_genes_per_batch"})
    f1 = lambda r: float(r.fold_metrics["macro_f1"].mean())  # noqa: E731
    print(f"macro F1: batch ensemble {f1(ensemble_run):.4f}, single {f1(single):.4f}")
    assert abs(f1(ensemble_run) - f1(single)) <= 0.02
    assert ensemble_run.fold_metrics["meta_binary_f1"].mean() > ensemble_run.fold_metrics["base_binary_f1"].mean()


def test_single_batch_falls_back_to_full_cross_validation_and_says_so(client, tiny_dataset, tmp_path):
    import metadask

    r = metadask.train(tiny_dataset, tmp_path / "run", client=client, strategy="batch-ensemble",
                       n_folds=2, n_estimators=10, analysis=False, seed=1)
    assert r.details["n_batches"] == 1 and r.details["ensemble_cv_mode"] == "full"
    assert "leave-batch-out CV is impossible" in r.details["ensemble_cv_note"]
    assert sorted(r.oof["fold"].unique()) == [0, 1]
    assert set(r.folds.unique()) == {0, 1}
    cv_fits = r.fits[r.fits["scope"] == "cv-member"]
    assert len(cv_fits) == 2 * 3 and set(cv_fits["fold"]) == {0, 1}
    assert r.model.n_members == 1


def test_full_ensemble_cv_retrains_batches_per_fold(client, tiny_dataset, tmp_path):
    import metadask

    r = metadask.train(tiny_dataset, tmp_path / "run", client=client, strategy="batch-ensemble", ensemble_cv="full",
                       n_folds=2, n_estimators=10, analysis=False, seed=1, max_genes_per_batch=12, ensemble_method="voting")
    assert r.details["ensemble_cv_mode"] == "full" and "ensemble_cv_note" not in r.details
    assert r.details["n_batches"] == 4
    cv_fits = r.fits[r.fits["scope"] == "cv-member"]
    assert set(cv_fits["fold"]) == {0, 1} and cv_fits.groupby("fold")["batch"].nunique().eq(2).all()
    assert np.allclose(r.model.weights, 0.25)  # voting: equal weights
    assert set(r.details["ensemble_cv_results"]["members_used"]) == {2}


def test_a_batch_without_splice_sites_is_a_clear_error():
    from metadask.dataset.index import GeneIndex
    from metadask.strategies.batch_ensemble import _check_batch

    table = pd.DataFrame({"n_rows": [10, 10], "n_neither": [10, 10], "n_donor": [0, 0], "n_acceptor": [0, 0],
                          "files": [(0,), (0,)]}, index=["a", "b"])
    with pytest.raises(TrainingError, match="Batch 3 has no donor, acceptor rows.*--max-genes-per-batch"):
        _check_batch(GeneIndex(table, ("f",)), ["a", "b"], "Batch 3")


def test_scoring_members_never_include_the_own_batch_and_are_seeded():
    from metadask.strategies.batch_ensemble import scoring_members

    assert scoring_members(2, 5, 0, seed=1) == [0, 1, 3, 4]  # 0: every other member
    assert scoring_members(2, 5, 10, seed=1) == [0, 1, 3, 4]
    picked = scoring_members(7, 40, 10, seed=1)
    assert len(picked) == 10 and 7 not in picked and picked == sorted(set(picked))
    assert picked == scoring_members(7, 40, 10, seed=1) and picked != scoring_members(7, 40, 10, seed=2)


def test_leave_batch_out_scoring_can_be_capped_to_fewer_members(client, tiny_dataset, tmp_path):
    import dask.config

    import metadask
    from metadask.strategies.batch_ensemble import scoring_members

    with dask.config.set({"metadask.ensemble-cv-members": 1}):
        r = metadask.train(tiny_dataset, tmp_path / "run", client=client, strategy="batch-ensemble",
                           **{**OPTS, "n_estimators": 10})
    assert r.details["ensemble_cv_members"] == 1 and "scored by 1 of the 2 members" in r.details["ensemble_cv_note"]
    assert all(row["members_used"] == 1 for row in r.details["ensemble_cv"])
    model = load_model(f"{r.out_dir}/model")
    from metadask.dataset import build_gene_index, open_dataset
    from metadask.strategies.tasks import gene_set, read_rows

    ds = open_dataset(tiny_dataset)
    index = build_gene_index(ds)
    genes = r.details["batches"]["0"]
    x, _, meta = read_rows(ds, gene_set(index, genes), model.features)
    expected = model.predict_margin(x, members=scoring_members(0, 3, 1, OPTS["seed"]))
    got = r.oof[r.oof["fold"] == 0].sort_values(["gene", "position"], kind="stable")
    order = meta.assign(i=np.arange(len(meta))).sort_values(["gene_id", "position"], kind="stable")["i"].to_numpy()
    assert np.allclose(got[[f"margin_{c}" for c in LABELS]].to_numpy(), expected[order], atol=1e-5)


# -- one task per batch: the batch read once for its three classes -----------------------------

def test_run_fits_gives_the_boosters_of_one_fit_per_class(tiny_dataset):
    from metadask.dataset import build_gene_index, open_dataset
    from metadask.plan import split_validation
    from metadask.strategies.tasks import FitSpec, gene_set, run_fit, run_fits

    ds = open_dataset(tiny_dataset)
    index = build_gene_index(ds)
    features = ["donor_score", "acceptor_score", "neither_score", "splice_probability", "probability_entropy",
                "context_score_m2", "context_score_m1", "context_score_p1"]
    genes = index.genes[:16]
    fit, valid = split_validation(index, genes, 0.2, 5)
    def gs(g):
        return gene_set(index, g)

    specs = [FitSpec(key=f"b0-{name}", scope="member", cls=k, fit=gs(fit), valid=gs(valid), eval_genes=tuple(fit[:3]),
                     n_estimators=25, early_stopping_rounds=5, params={"max_depth": 4, "eta": 0.3, "max_bin": 64,
                                                                        "objective": "binary:logistic", "seed": 1})
             for k, name in enumerate(LABELS)]
    shared = run_fits(ds, features, specs)
    for spec, got in zip(specs, shared):
        alone = run_fit(ds, features, spec)
        assert got.booster == alone.booster  # the same trees, byte for byte
        assert (got.n_trees, got.rows, got.history) == (alone.n_trees, alone.rows, alone.history)
        assert got.seconds > 0 and got.peak_rss > 0
    assert len({o.booster for o in shared}) == 3  # three classes, three different boosters
    with pytest.raises(ValueError, match="share their genes"):
        run_fits(ds, features, [specs[0], FitSpec(**{**specs[1].__dict__, "fit": gs(genes)})])


@pytest.mark.parametrize("share", [True, False])
def test_batch_ensemble_shares_a_batch_read_among_its_classes_when_batches_are_many(
        share, ensemble_run, client, tiny_dataset, tmp_path, monkeypatch, caplog):
    import logging

    import metadask
    from metadask.strategies import batch_ensemble

    # 3 batches on the session's 2 worker threads: shared reads from 1 batch per thread, not from 2
    monkeypatch.setattr(batch_ensemble, "SHARE_READS_PER_THREAD", 1 if share else 2)
    with caplog.at_level(logging.INFO, logger="metadask"):
        again = metadask.train(tiny_dataset, tmp_path / "run", client=client, strategy="batch-ensemble", **OPTS)
    said = "one task per batch for its three classes" if share else "one task per (batch, class) fit"
    assert said in caplog.text
    key = ["gene", "position"]
    a = ensemble_run.oof.sort_values(key, kind="stable").reset_index(drop=True)
    b = again.oof.sort_values(key, kind="stable").reset_index(drop=True)
    cols = [f"margin_{c}" for c in LABELS] + ["prob_neither", "prob_donor", "prob_acceptor", "fold"]
    pd.testing.assert_frame_equal(a[key + cols], b[key + cols], check_exact=True)
    assert list(again.fits["n_trees"]) == list(ensemble_run.fits["n_trees"])
    assert len(again.fits) == 9


def test_shared_batch_reads_resume_only_the_missing_classes(client, tiny_dataset, tmp_path, monkeypatch, caplog):
    import logging

    import metadask
    from metadask.strategies import batch_ensemble

    monkeypatch.setattr(batch_ensemble, "SHARE_READS_PER_THREAD", 1)
    out = tmp_path / "run"
    first = metadask.train(tiny_dataset, out, client=client, strategy="batch-ensemble", **OPTS)
    missing = {"member-b0-donor", "member-b0-acceptor", "member-b1-neither"}  # 2 of one batch, 1 of another
    for key in missing:
        (out / "journal" / f"{key}.json").unlink()
    caplog.clear()  # only the resumed run's lines (an earlier test may leave the metadask logger at INFO)
    with caplog.at_level(logging.INFO, logger="metadask"):
        again = metadask.train(tiny_dataset, out, client=client, strategy="batch-ensemble", resume=True, **OPTS)
    reused = set(re.findall(r"member fit (\S+): reused from the journal", caplog.text))
    trained = set(re.findall(r"\[\d+/\d+\] member fit (\S+) \(", caplog.text))
    assert trained == missing and len(reused) == 6 and not reused & missing
    pd.testing.assert_frame_equal(first.oof, again.oof, check_exact=True)


def test_cached_boosters_load_each_member_once_and_never_confuse_boosters():
    from metadask.strategies import batch_ensemble as be

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)

    def fit(seed: int) -> FitOutput:
        y = (x[:, seed % 4] > seed / 10).astype(np.float32)  # a different model for every seed
        b = xgb.train({"max_depth": 2, "seed": seed}, xgb.DMatrix(x, label=y), num_boost_round=3)
        return FitOutput(booster=booster_to_bytes(b), best_iteration=2, n_trees=3, seconds=0.0, rows=200)

    member_a, member_b = [fit(s) for s in (1, 2, 3)], [fit(s) for s in (5, 6, 7)]
    be._booster_cache.clear()
    first = be.cached_boosters(member_a)
    assert all(a is b for a, b in zip(be.cached_boosters(member_a), first))  # the same loaded objects: loaded once
    other = be.cached_boosters(member_b)
    assert all(o is not f for o, f in zip(other, first))
    for boosters, member in ((first, member_a), (other, member_b)):
        for b, f in zip(boosters, member):
            expected = xgb.Booster(model_file=bytearray(f.booster)).inplace_predict(x, predict_type="margin")
            np.testing.assert_array_equal(b.inplace_predict(x, predict_type="margin"), expected)
    be._booster_cache.clear()
