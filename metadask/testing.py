"""Test helpers shipped with metadask: synthetic datasets and real-data locations.

Third-party strategies can use these, and :func:`check_strategy` (the conformance check every
strategy must pass), in their own test suites.
"""

from __future__ import annotations

import os
import uuid
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metadask.dataset.synthetic import make_dataset

__all__ = ["add_columns", "check_canary", "check_out_of_fold_margins", "check_strategy", "gene_memoriser", "label_copy", "make_canary_dataset", "make_dataset",
           "real_data_path", "run_files"]


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


# -- datasets with planted leaks ------------------------------------------------------------

def _parquet_files(dataset: str | os.PathLike) -> list[Path]:
    root = Path(dataset)
    root = root / "master" if (root / "master").is_dir() else root
    files = sorted(root.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"No parquet files under '{root}'.")
    return files


def add_columns(dataset: str | os.PathLike, columns: Callable[[pd.DataFrame], Mapping[str, np.ndarray]]) -> Path:
    """Add columns to every parquet file of ``dataset`` (in place, each file replaced atomically).

    ``columns(frame)`` gets one file's rows (the label column as written) and returns
    name -> values for those rows. Returns ``dataset`` as a path.
    """
    for file in _parquet_files(dataset):
        frame = pd.read_parquet(file)
        for name, values in columns(frame).items():
            frame[name] = np.asarray(values)
        tmp = file.with_name(f".{file.name}.{uuid.uuid4().hex[:8]}.tmp")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, file)
    return Path(dataset)


def _label_codes(frame: pd.DataFrame, label_column: str = "splice_type") -> np.ndarray:
    from metadask.dataset.schema import encode_labels

    return np.asarray(encode_labels(frame[label_column], label_column), dtype=np.int64)


def _rng(frame: pd.DataFrame, seed: int, gene_column: str = "gene_id") -> np.random.Generator:
    first = str(frame[gene_column].iloc[0]) if len(frame) else ""
    return np.random.default_rng([seed, zlib.crc32(first.encode())])


def label_copy(frame: pd.DataFrame, *, seed: int = 0, noise: float = 0.05, label_column: str = "splice_type") -> np.ndarray:
    """A near copy of the label that no correlation threshold catches.

    Donor rows get +1, acceptor rows -1, neither rows 0, each plus Gaussian noise (sd
    ``noise``): |Pearson| ~0.73 with each class, ~0 with splice-vs-neither, yet the column
    alone tells every class apart. Screening must exclude it (gene-grouped AUC rule).
    """
    codes = _label_codes(frame, label_column)
    value = np.select([codes == 1, codes == 2], [1.0, -1.0], 0.0)
    return value + _rng(frame, seed).normal(0.0, noise, len(frame))


def gene_memoriser(frame: pd.DataFrame, *, seed: int = 0, label_column: str = "splice_type",
                   gene_column: str = "gene_id") -> np.ndarray:
    """A feature that memorises each gene's labels: perfect in sample, useless out of fold.

    Each (gene, class) pair gets its own random value, so within the genes a model trained on
    the column tells every class apart, while on a gene it never saw the values are new and
    carry nothing about the class.
    """
    codes = _label_codes(frame, label_column)
    out = np.empty(len(frame))
    for gene, rows in frame.groupby(gene_column, sort=False).indices.items():
        rng = np.random.default_rng([seed, zlib.crc32(str(gene).encode())])
        out[rows] = rng.uniform(0.0, 1.0, 3)[codes[rows]]
    return out


def _registered_name(strategy: Any) -> str:
    """The name of ``strategy`` (a name, or a Strategy class registered here first)."""
    from metadask.strategies.registry import register_strategy

    if isinstance(strategy, type):
        register_strategy(strategy)
        return strategy.name
    return str(strategy)


def make_canary_dataset(out: str | os.PathLike, n_genes: int = 60, *, rows_per_gene: int = 60, seed: int = 0,
                        genes_per_file: int = 20) -> Path:
    """A dataset where only a memorising feature tells the classes apart (the fold-honesty canary).

    Every gene has ``rows_per_gene`` rows (about 10 % donor, 10 % acceptor). The base scores
    and two other features are noise; ``gene_memory`` is :func:`gene_memoriser`. A model
    scored on genes it never saw must stay at chance (AUC ~0.5); the same model scored on its
    own training genes is nearly perfect. Written as ``out/master/batch_NNNNN.parquet``.
    """
    rng = np.random.default_rng(seed)
    master = Path(out) / "master"
    master.mkdir(parents=True, exist_ok=True)
    n_sites = max(1, rows_per_gene // 10)
    parts = []
    for g in range(n_genes):
        labels = np.array(["donor"] * n_sites + ["acceptor"] * n_sites + ["neither"] * (rows_per_gene - 2 * n_sites), dtype=object)
        rng.shuffle(labels)
        parts.append(pd.DataFrame({"gene_id": f"CANARY{g:04d}", "position": np.arange(rows_per_gene) * 10,
                                   "splice_type": labels}))
    df = pd.concat(parts, ignore_index=True)
    n = len(df)
    scores = rng.dirichlet(np.ones(3), n)
    df["donor_score"], df["acceptor_score"], df["neither_score"] = scores[:, 0], scores[:, 1], scores[:, 2]
    df["noise_a"] = rng.normal(size=n)
    df["noise_b"] = rng.integers(0, 5, n).astype(np.float64)
    df["gene_memory"] = gene_memoriser(df, seed=seed)
    genes = sorted(df["gene_id"].unique())
    for i in range(0, len(genes), genes_per_file):
        df[df["gene_id"].isin(genes[i:i + genes_per_file])].to_parquet(master / f"batch_{i // genes_per_file:05d}.parquet", index=False)
    return Path(out)


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
    * **honest out-of-fold margins** (:func:`check_out_of_fold_margins`): every row's margins,
      recomputed from ``result.fold_models[fold]`` (the model that never saw the fold's
      genes) on the rows read afresh from the dataset, equal what the strategy reported;
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
    from metadask.training import train

    name = _registered_name(strategy)
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

    check_out_of_fold_margins(first, ds, name=name)

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


def check_out_of_fold_margins(result: Any, dataset: Any, *, name: str | None = None,
                              rtol: float = 1e-4, atol: float = 1e-4) -> float:
    """Recompute every out-of-fold row's margins from its fold's model; raise AssertionError if they differ.

    For each CV fold of ``result.oof``, the rows of the fold's genes are read afresh from
    ``dataset`` and scored by ``result.fold_models[fold]`` (the uncalibrated model, or the
    ensemble of members, that never saw those genes); the margins must match the
    ``margin_*`` columns the strategy reported, row for row (matched on gene and position).
    A strategy that scored a row with any other model (the final one, a member that saw the
    gene) fails. Returns the largest absolute difference.
    """
    from metadask.dataset.schema import LABELS
    from metadask.dataset.source import open_dataset

    name = name or str(result.strategy)
    ds = dataset if hasattr(dataset, "read_genes") else open_dataset(dataset)
    cols = [f"margin_{c}" for c in LABELS]
    oof = result.oof
    missing = [c for c in ("gene", "position", "fold", *cols) if c not in oof]
    if missing:
        raise _fail(name, f"out-of-fold predictions lack columns {missing}")
    folds = sorted(int(f) for f in oof["fold"].unique())
    models = result.fold_models
    absent = [f for f in folds if f not in models]
    if absent:
        raise _fail(name, f"TrainingResult.fold_models has no model for folds {absent} (each fold needs the model "
                          "that scored it, to check its out-of-fold margins)")
    worst = 0.0
    for fold in folds:
        rows = oof.loc[oof["fold"] == fold, ["gene", "position", *cols]].copy()
        rows["gene"] = rows["gene"].astype(str)
        frame = ds.read_genes(sorted(rows["gene"].unique()))
        model = models[fold]
        again = pd.DataFrame(model.predict_margin(model.matrix(frame)), columns=[f"{c}_again" for c in cols])
        again["gene"] = frame[ds.gene_column].astype(str).to_numpy()
        again["position"] = frame["position"].to_numpy()
        merged = rows.merge(again, on=["gene", "position"], how="left", validate="one_to_one")
        if merged[f"{cols[0]}_again"].isna().any():
            raise _fail(name, f"fold {fold}: out-of-fold rows not found in the dataset")
        got, want = merged[cols].to_numpy(float), merged[[f"{c}_again" for c in cols]].to_numpy(float)
        diff = float(np.max(np.abs(got - want))) if len(got) else 0.0
        worst = max(worst, diff)
        if not np.allclose(got, want, rtol=rtol, atol=atol):
            bad = int(np.argmax(np.abs(got - want).max(axis=1)))
            raise _fail(name, f"fold {fold}: out-of-fold margins differ from those of the fold's model, which never saw "
                              f"its genes (max |diff| {diff:.3g}, e.g. gene {merged['gene'].iloc[bad]} position "
                              f"{merged['position'].iloc[bad]})")
    return worst


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score))


def check_canary(strategy: str | type, client: Any, tmp_path: str | os.PathLike, *, dataset: str | os.PathLike | None = None,
                 chance: float = 0.1, **options: Any) -> dict[str, float]:
    """Train ``strategy`` on the canary dataset: out-of-fold metrics must stay at chance.

    The canary (:func:`make_canary_dataset`) has one useful feature, which memorises each
    gene's labels: a model that saw a gene scores it almost perfectly, a model that did not
    is at chance. So an out-of-fold splice-vs-neither AUC further than ``chance`` from 0.5
    means some out-of-fold row was scored by a model that saw its gene (scored on the
    uncalibrated splice-vs-neither margin, ``-margin_neither``). Boosted strategies
    are also checked to exploit the feature in sample (final model on its training rows,
    AUC >= 0.7; an ensemble's members each saw a fraction of the genes), which shows the
    canary is armed. Returns ``{"oof_auc", "in_sample_auc"}``.
    """
    from metadask.dataset.schema import encode_labels
    from metadask.dataset.source import open_dataset
    from metadask.training import train

    name = _registered_name(strategy)
    tmp = Path(tmp_path)
    data = Path(dataset) if dataset is not None else make_canary_dataset(tmp / "canary-data")
    opts = {"n_folds": 3, "n_estimators": 30, "early_stopping_rounds": 0, "analysis": False, "seed": 0,
            "screening_sample": 1.0, **options, "strategy": name}
    result = train(data, tmp / f"canary-{name}", client=client, **opts)
    if "gene_memory" not in result.features:
        raise _fail(name, "the canary feature 'gene_memory' was screened out, so the canary proves nothing")
    y = (result.oof["label"].to_numpy() > 0).astype(int)
    oof_auc = _auc(y, -result.oof["margin_neither"].to_numpy())  # uncalibrated: calibration is fit on these rows
    if abs(oof_auc - 0.5) > chance:
        raise _fail(name, f"on the canary dataset the out-of-fold splice AUC is {oof_auc:.3f}, not chance (0.5 +- "
                          f"{chance}): out-of-fold rows were scored by models that saw their genes")
    ds = open_dataset(data)
    frame = ds.read_genes(sorted(result.folds.index))
    margins = result.model.predict_margin(result.model.matrix(frame))
    codes = np.asarray(encode_labels(frame[ds.label_column], ds.label_column))
    in_sample = _auc((codes > 0).astype(int), -margins[:, 0])
    boosted = type(result.model).__name__ != "LinearModel"
    if boosted and in_sample < 0.7:
        raise _fail(name, f"the final model does not exploit the canary feature in sample (AUC {in_sample:.3f} < 0.7), "
                          "so the canary check is not armed; raise n_estimators")
    return {"oof_auc": oof_auc, "in_sample_auc": in_sample}
