"""Fold honesty for every strategy: reported out-of-fold margins come from models that never saw the gene.

Two strategy-agnostic checks from :mod:`metadask.testing`: the out-of-fold margins are
recomputed from ``TrainingResult.fold_models`` (also part of ``check_strategy``), and the
canary dataset, whose only useful feature memorises each gene's labels, must give
out-of-fold metrics at chance while the final model exploits it in sample.
"""

from __future__ import annotations

import pytest

from metadask.testing import check_canary, check_out_of_fold_margins, make_canary_dataset

STRATEGIES = [
    pytest.param("single", {}, id="single"),
    pytest.param("batch-ensemble", {"max_genes_per_batch": 20}, id="batch-ensemble"),
    pytest.param("distributed", {}, id="distributed"),
    pytest.param("incremental", {}, id="incremental"),
]


@pytest.fixture(scope="module")
def canary(tmp_path_factory):
    return make_canary_dataset(tmp_path_factory.mktemp("canary") / "data", 60)


@pytest.mark.parametrize(("name", "extra"), STRATEGIES)
def test_out_of_fold_metrics_stay_at_chance_on_the_canary_dataset(name, extra, canary, client, tmp_path):
    scores = check_canary(name, client, tmp_path, dataset=canary, **extra)
    assert abs(scores["oof_auc"] - 0.5) <= 0.1


def test_the_canary_catches_a_strategy_that_scores_out_of_fold_rows_with_the_final_model(canary, client, tmp_path):
    from metadask.strategies.single import SingleStrategy

    class LeakyStrategy(SingleStrategy):
        """Broken on purpose: out-of-fold margins from the final model, which saw every gene."""

        name = "broken-leaky-canary"

        def fit(self, ctx):
            result = super().fit(ctx)
            oof = result.oof.copy()
            frame = ctx.dataset.read_genes(sorted(oof["gene"].astype(str).unique()))
            margins = result.model.predict_margin(result.model.matrix(frame))
            order = oof.sort_values(["gene", "position"]).index
            for k, c in enumerate(("neither", "donor", "acceptor")):
                oof.loc[order, f"margin_{c}"] = margins[:, k]
            result.oof = oof  # replaces the out-of-fold predictions
            return result

    with pytest.raises(AssertionError, match="not chance"):
        check_canary(LeakyStrategy, client, tmp_path, dataset=canary)


def test_recomputed_margins_catch_out_of_fold_rows_scored_by_another_model(canary, client, tmp_path):
    from metadask.training import train

    result = train(canary, tmp_path / "run", client=client, strategy="single", n_folds=3, n_estimators=5,
                   analysis=False, seed=0)
    assert check_out_of_fold_margins(result, canary) < 1e-4
    oof = result.oof.copy()
    oof.loc[oof["fold"] == 0, "margin_donor"] += 0.01  # what another model's margins would look like
    result.oof = oof
    with pytest.raises(AssertionError, match="fold 0: out-of-fold margins differ"):
        check_out_of_fold_margins(result, canary)
