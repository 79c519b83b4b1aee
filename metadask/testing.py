"""Test helpers shipped with metadask: synthetic datasets and real-data locations.

Third-party strategies can use these, and :func:`check_strategy` (the conformance check every
strategy must pass), in their own test suites.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from metadask.dataset.synthetic import make_dataset

__all__ = ["check_strategy", "make_dataset", "real_data_path", "run_files"]


def real_data_path(name: str = "real_fly_3mer") -> Path | None:
    """Where the shared real fly dataset lives (``METADASK_REAL_DATA`` or ``../shared/data``)."""
    root = os.environ.get("METADASK_REAL_DATA")
    candidates = [Path(root)] if root else []
    here = Path(__file__).resolve().parents[1]
    candidates += [here.parent / "shared" / "data", here / ".." / "shared" / "data"]
    for base in candidates:
        p = base / name
        if (p / "master").is_dir():
            return p
    return None


# -- strategy conformance ------------------------------------------------------------------

_PER_STRATEGY = ("model", "journal")
"""Folders whose contents legitimately differ between strategies (bundle layout, fit keys)."""


def run_files(out_dir: str | os.PathLike) -> set[str]:
    """Relative paths of a run's artifact files (the model bundle and journal as folders)."""
    root = Path(out_dir)
    files = set()
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if rel.parts[0] in _PER_STRATEGY:
            files.add(rel.parts[0] + "/")
        elif p.is_file() and not rel.name.startswith("."):
            files.add(rel.as_posix())
    return files


def _fail(name: str, what: str) -> AssertionError:
    return AssertionError(f"Strategy '{name}' fails the conformance check: {what}")


def check_strategy(
    strategy: str | type,
    dataset_path: str | os.PathLike,
    client: Any,
    tmp_path: str | os.PathLike,
    *,
    reference: str | os.PathLike | None = None,
    **options: Any,
) -> Any:
    """Check that a strategy honours the contract every strategy must (raise AssertionError if not).

    Trains ``strategy`` twice on ``dataset_path`` with the same seed on ``client`` (outputs
    under ``tmp_path``) and checks:

    * **determinism**: identical out-of-fold probabilities, folds and final-model predictions;
    * **genes are never split**: each gene's rows lie in exactly one CV fold, ``result.folds``
      agrees with the out-of-fold frame, and ensemble batches (``result.details["batches"]``)
      are disjoint and cover every gene;
    * **out-of-fold predictions**: one per dataset row, probabilities summing to 1;
    * **the artifact set**: the same files as a ``single`` run with the same options
      (``reference``: the output directory of such a run; trained here when omitted);
    * **the model interface**: ``load_model(out/"model")`` predicts what ``result.model`` does,
      probabilities sum to 1, and ``predict_proba`` / ``predict`` agree on pandas, NumPy and Dask
      input; the bundle records the strategy.

    Parameters
    ----------
    strategy
        A registered strategy name, or a :class:`~metadask.strategies.Strategy` subclass
        (registered under its ``name``).
    dataset_path
        A small dataset (tens of genes) with every class in every fold.
    client
        A ``distributed.Client``.
    tmp_path
        A directory for the runs.
    reference
        Output directory of a ``single`` run with the same options (saves a run).
    **options
        Training options; defaults ``n_folds=3, n_estimators=20, analysis=False``.

    Returns
    -------
    TrainingResult
        The first run's result.
    """
    import numpy as np
    import pandas as pd

    from metadask.analysis.metrics import PROB_COLUMNS
    from metadask.dataset.source import open_dataset
    from metadask.models.bundle import load_model
    from metadask.strategies.registry import register_strategy
    from metadask.training import train

    if isinstance(strategy, type):
        register_strategy(strategy)
        name = strategy.name
    else:
        name = str(strategy)
    tmp = Path(tmp_path)
    opts = {"n_folds": 3, "n_estimators": 20, "analysis": False, "seed": 0, **options, "strategy": name}
    runs = [train(dataset_path, tmp / f"{name}-run{i}", client=client, **opts) for i in (1, 2)]
    first, second = runs
    if first.strategy != name:
        raise _fail(name, f"the result names strategy '{first.strategy}'")

    # out-of-fold predictions: every row, probabilities, genes never split
    ds = open_dataset(dataset_path)
    oofs = []
    for r in runs:
        missing = [c for c in ("gene", "position", "label", "fold", *PROB_COLUMNS) if c not in r.oof]
        if missing:
            raise _fail(name, f"out-of-fold predictions lack columns {missing}")
        oofs.append(r.oof.sort_values(["gene", "position"], kind="stable").reset_index(drop=True))
    oof = oofs[0]
    if len(oof) != ds.schema.n_rows:
        raise _fail(name, f"{len(oof)} out-of-fold predictions for {ds.schema.n_rows} rows")
    if oof.duplicated(["gene", "position"]).any():
        raise _fail(name, "some rows have two out-of-fold predictions")
    sums = oof[list(PROB_COLUMNS)].sum(axis=1).to_numpy()
    if not np.allclose(sums, 1.0, atol=1e-6):
        raise _fail(name, f"out-of-fold probabilities do not sum to 1 (worst row sums to {sums[np.argmax(abs(sums - 1))]:.6f})")
    per_gene = oof.groupby("gene")["fold"].nunique()
    split = per_gene.index[per_gene > 1]
    if len(split):
        raise _fail(name, f"{len(split)} genes are split across CV folds (e.g. {list(split[:3])})")
    folds = first.folds
    by_oof = oof.groupby("gene")["fold"].first()
    if set(folds.index) != set(by_oof.index) or not (folds.loc[by_oof.index].to_numpy() == by_oof.to_numpy()).all():
        raise _fail(name, "result.folds (gene -> fold) disagrees with the folds of the out-of-fold predictions")
    batches = first.details.get("batches")
    if batches is not None:
        seen: dict[str, Any] = {}
        for b, genes in dict(batches).items():
            for g in genes:
                if g in seen:
                    raise _fail(name, f"gene {g} is in two ensemble batches ({seen[g]} and {b})")
                seen[g] = b
        if set(seen) != set(by_oof.index):
            raise _fail(name, f"ensemble batches cover {len(seen)} genes, the dataset has {len(by_oof)}")

    # determinism
    a, b = (o[list(PROB_COLUMNS)].to_numpy() for o in oofs)
    if a.shape != b.shape or not np.array_equal(a, b):
        diff = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("nan")
        raise _fail(name, f"two runs with the same seed gave different out-of-fold probabilities (max |diff| {diff:.3g})")
    if not first.folds.sort_index().equals(second.folds.sort_index()):
        raise _fail(name, "two runs with the same seed gave different folds")

    # artifact set
    out1 = Path(first.out_dir or tmp / f"{name}-run1")
    if reference is None:
        reference = out1 if name == "single" else tmp / "single-reference"
        if name != "single":
            train(dataset_path, reference, client=client, **{**opts, "strategy": "single"})
    got, want = run_files(out1), run_files(reference)
    if got != want:
        raise _fail(name, f"artifact files differ from a single-strategy run: missing {sorted(want - got)}, "
                          f"extra {sorted(got - want)}")

    # model interface
    model = load_model(out1 / "model")
    manifest = getattr(model, "manifest", {})
    if manifest.get("strategy") != name:
        raise _fail(name, f"the model bundle records strategy {manifest.get('strategy')!r}")
    genes = sorted(by_oof.index)[:3]
    frame = ds.read_genes(genes)
    p_loaded = model.predict_proba(frame)
    p_result = first.model.predict_proba(frame)
    p_second = second.model.predict_proba(frame)
    if p_loaded.shape != (len(frame), 3):
        raise _fail(name, f"predict_proba returned shape {p_loaded.shape} for {len(frame)} rows")
    if not np.allclose(p_loaded, p_result, rtol=1e-6, atol=1e-9):
        raise _fail(name, "the saved model bundle predicts differently from result.model "
                          f"(max |diff| {float(np.max(np.abs(p_loaded - p_result))):.3g})")
    if not np.array_equal(p_result, p_second):
        raise _fail(name, "two runs with the same seed gave final models that predict differently")
    if not np.allclose(p_loaded.sum(axis=1), 1.0, atol=1e-9) or (p_loaded < 0).any():
        raise _fail(name, "predicted probabilities are negative or do not sum to 1")
    p_numpy = model.predict_proba(frame[model.features].to_numpy())
    if not np.allclose(p_numpy, p_loaded, rtol=1e-6, atol=1e-9):
        raise _fail(name, "predict_proba differs between NumPy and pandas input")
    import dask.dataframe as dd

    ddf = dd.from_pandas(frame, npartitions=2)
    p_dask = client.compute(model.predict_proba(ddf)).result()
    if not isinstance(p_dask, pd.DataFrame) or not np.allclose(p_dask.to_numpy(), p_loaded, rtol=1e-6, atol=1e-9):
        raise _fail(name, "predict_proba on a Dask dataframe differs from pandas input")
    classes = model.predict(frame)
    if not np.array_equal(classes, p_loaded.argmax(axis=1)):
        raise _fail(name, "predict is not the argmax of predict_proba")
    classes_dask = client.compute(model.predict(ddf)).result().to_numpy()
    if not np.array_equal(classes_dask, classes):
        raise _fail(name, "predict on a Dask dataframe differs from pandas input")
    return first
