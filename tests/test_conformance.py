"""Every built-in strategy passes metadask.testing.check_strategy (and the check can fail)."""

from __future__ import annotations

import pytest

from metadask.testing import check_strategy, run_files

OPTS = {"n_folds": 3, "n_estimators": 15, "analysis": False, "seed": 0}

# strategy name -> extra options for a tiny run; other strategies are added here as they land
STRATEGIES = [
    pytest.param("single", {}, id="single"),
    pytest.param("batch-ensemble", {"max_genes_per_batch": 15}, id="batch-ensemble"),
    pytest.param("distributed", {}, id="distributed"),
    pytest.param("incremental", {}, id="incremental"),
]


@pytest.fixture(scope="module")
def reference(cluster, tiny_dataset, tmp_path_factory):
    """Output directory of one single-strategy run with the conformance options."""
    import metadask
    from distributed import Client

    out = tmp_path_factory.mktemp("reference") / "single"
    with Client(cluster) as client:
        metadask.train(tiny_dataset, out, client=client, strategy="single", **OPTS)
    return out


@pytest.mark.parametrize(("name", "extra"), STRATEGIES)
def test_strategy_passes_the_conformance_check(name, extra, client, tiny_dataset, tmp_path, reference):
    result = check_strategy(name, tiny_dataset, client, tmp_path, reference=reference, **OPTS, **extra)
    assert result.strategy == name


def test_the_reference_run_has_the_core_artifacts(reference):
    files = run_files(reference)
    assert {"model/", "oof_predictions.parquet", "gene_cv_metrics.csv", "training_summary.txt",
            "training_summary.json", "feature_manifest.csv"} <= files


def test_the_check_rejects_a_strategy_that_splits_genes(client, tiny_dataset, tmp_path, reference):
    from metadask.strategies.single import SingleStrategy

    class SplittingStrategy(SingleStrategy):
        """Broken on purpose: moves one row of a gene into another fold."""

        name = "broken-splitting"

        def fit(self, ctx):
            result = super().fit(ctx)
            oof = result.oof.copy()
            first = oof.index[0]
            oof.loc[first, "fold"] = (oof.loc[first, "fold"] + 1) % ctx.config.n_folds
            result.oof = oof
            return result

    with pytest.raises(AssertionError, match="genes are split across CV folds"):
        check_strategy(SplittingStrategy, tiny_dataset, client, tmp_path, reference=reference, **{**OPTS, "n_estimators": 5})
