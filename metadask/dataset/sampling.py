"""Sampling the library knows: negatives of full-body genes kept with known probabilities.

A full-body dataset has a row for every position of each gene, ~99.8 % of them "neither".
Training on all of them is wasteful, and training on an unknown sample (the upstream layout)
gives a model whose probabilities and thresholds refer to the wrong distribution. Here every
row of a gene falls in one stratum with a documented inclusion probability
(:class:`SamplingRules`):

========  ==============================================================  =================
stratum   rows                                                            kept with p =
========  ==============================================================  =================
site      every donor / acceptor                                          1
hard      negatives with max(donor_score, acceptor_score) >= 0.01         1
near      other negatives within +-50 positions of a site of the gene     ``near_rate`` 0.1
easy      every other negative                                            ``easy_rate`` 0.01
========  ==============================================================  =================

Each kept row carries ``sample_weight = 1 / p`` (times any weight the input row already
had), so weighted sums over the sample estimate sums over the full body: the weights of a
gene sum to about its number of positions. The draw for a row is a uniform from a numpy
Generator seeded with ``(seed, crc32(gene_id), 0)``, taken in position order within the gene,
so the sample depends only on (seed, gene, its rows), never on how genes are partitioned
into files or tasks. With the defaults the 60 real fly full bodies keep 2.4 % of their
positions (8,504 of 352,174; weights sum to 352,286) and a synthetic full body
(``make-dataset --full-body``, whose sites are denser) ~5.5 % (see docs/full-body.md).

:func:`write_sampled_dataset` samples a whole dataset on the Dask workers (one task per
group of genes sharing files; each task reads its own rows and writes its own parquet file),
and :func:`read_unsampled` returns the negatives a sample left out, for hard-negative mining.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from metadask.cluster.watch import watched
from metadask.dataset.index import GeneIndex, build_gene_index, check_genes
from metadask.dataset.rows import gene_partitions
from metadask.dataset.schema import WEIGHT_COLUMN, encode_labels, gene_keys
from metadask.dataset.source import Dataset, _read_footer, open_dataset
from metadask.errors import DatasetError, OutputError, option_error, preview

__all__ = [
    "STRATA",
    "SamplingRules",
    "read_unsampled",
    "sample_gene_rows",
    "sample_mask",
    "write_sampled_dataset",
]

log = logging.getLogger(__name__)

STRATA: tuple[str, ...] = ("site", "hard", "near", "easy")
"""Stratum names in code order (see :class:`SamplingRules`)."""
PROBABILITY_COLUMN = "inclusion_probability"
"""Column of :func:`sample_gene_rows`'s left-out rows (``return_rest=True``)."""
_STREAM_KEEP = 0  # numpy stream of the keep / drop draws (later rounds use other streams)
_FORMAT = 1


@dataclass(frozen=True)
class SamplingRules:
    """Which rows of a full-body gene are kept, and with what probability.

    Parameters
    ----------
    hard_threshold : float, default 0.01
        Negatives whose base score ``max(donor_score, acceptor_score)`` is at least this are
        all kept ("hard" negatives: every peak a user would see). Real fly: 0.22 % of
        positions; 0.01 is the threshold of the issue's best simple meta-model.
    near_window : int, default 50
        Negatives within this many positions of a site of the same gene are "near".
    near_rate : float, default 0.1
        Probability of keeping a near negative (weight 10).
    easy_rate : float, default 0.01
        Probability of keeping any other negative (weight 100).
    score_columns : tuple of str, default ("donor_score", "acceptor_score")
        The base scores whose maximum defines "hard".

    Notes
    -----
    Every site and every hard negative is kept (weight 1). Rates must lie in (0, 1]: a
    stratum that is never sampled could not be reweighted to the full body.
    """

    hard_threshold: float = 0.01
    near_window: int = 50
    near_rate: float = 0.1
    easy_rate: float = 0.01
    score_columns: tuple[str, ...] = ("donor_score", "acceptor_score")

    def validate(self) -> SamplingRules:
        """Return ``self`` if every rule is in range, else raise :class:`ConfigError`."""
        def num(v: object) -> bool:
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

        if not num(self.hard_threshold) or not 0 <= self.hard_threshold <= 1:  # type: ignore[operator]
            raise option_error("hard_threshold", "must be a number in [0, 1]", self.hard_threshold,
                               "Use for example 0.01.")
        if not isinstance(self.near_window, (int, np.integer)) or isinstance(self.near_window, bool) \
                or self.near_window < 0:
            raise option_error("near_window", "must be an integer >= 0", self.near_window,
                               "Use for example 50.")
        for name in ("near_rate", "easy_rate"):
            v = getattr(self, name)
            if not num(v) or not 0 < v <= 1:
                raise option_error(name, "must be a probability in (0, 1]", v,
                                   "Use for example 0.1 (near) or 0.01 (easy).")
        if not self.score_columns or isinstance(self.score_columns, str):
            raise option_error("score_columns", "must name one or more base-score columns",
                               self.score_columns, "Use ('donor_score', 'acceptor_score').")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The rules as plain JSON-ready values."""
        d = asdict(self)
        d["score_columns"] = list(self.score_columns)
        return d


def _gene_seed(seed: int, gene: str, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(str(gene).encode("utf-8")), stream])


def _plan(df: pd.DataFrame, rules: SamplingRules, seed: int, gene_column: str, label_column: str,
          position_column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept mask, inclusion probability, stratum code) for every row of ``df``."""
    missing = [c for c in (gene_column, label_column, position_column, *rules.score_columns)
               if c not in df]
    if missing:
        raise DatasetError(
            f"Sampling needs the columns {preview(missing)}, which the rows lack. Sampling works "
            "on labelled full-body rows with a position and base scores; name the columns "
            "with --gene-column / --label-column."
        )
    n = len(df)
    codes = encode_labels(df[label_column], label_column)
    score = np.nan_to_num(df[list(rules.score_columns)].to_numpy(np.float64, na_value=0.0)).max(
        axis=1, initial=0.0)
    pos = df[position_column].to_numpy(np.int64)
    stratum = np.where(codes > 0, 0, np.where(score >= rules.hard_threshold, 1, 3)).astype(np.int8)
    kept = np.ones(n, bool)
    genes = gene_keys(df[gene_column])
    for gene, idx in pd.Series(np.arange(n)).groupby(genes, sort=False).indices.items():
        order = idx[np.argsort(pos[idx], kind="stable")]  # draws in position order
        p = pos[order]
        sites = p[codes[order] > 0]
        s = stratum[order]
        if len(sites) and rules.near_window > 0:
            j = np.searchsorted(sites, p)
            left = np.abs(p - sites[np.clip(j - 1, 0, len(sites) - 1)])
            right = np.abs(sites[np.clip(j, 0, len(sites) - 1)] - p)
            s = np.where((s == 3) & (np.minimum(left, right) <= rules.near_window), 2, s)
            stratum[order] = s
        u = _gene_seed(seed, gene, _STREAM_KEEP).random(len(order))
        rate = np.array([1.0, 1.0, rules.near_rate, rules.easy_rate])[s]
        kept[order] = u < rate
    prob = np.array([1.0, 1.0, rules.near_rate, rules.easy_rate])[stratum]
    return kept, prob, stratum


def sample_mask(df: pd.DataFrame, rules: SamplingRules | None = None, seed: int = 42, *,
                gene_column: str = "gene_id", label_column: str = "splice_type",
                position_column: str = "position") -> tuple[np.ndarray, np.ndarray]:
    """Which rows of whole full-body genes the rules keep, and each row's inclusion probability.

    Parameters
    ----------
    df : pandas.DataFrame
        Every row of one or more genes (any order; genes may be interleaved), with the gene,
        label, position and score columns.
    rules : SamplingRules, optional
        Defaults to ``SamplingRules()``.
    seed : int, default 42
        Row ``r`` of gene ``g`` is kept when ``u < p``, ``u`` the draw of ``r``'s rank by
        position in a Generator seeded with ``(seed, crc32(g), 0)``.
    gene_column, label_column, position_column : str
        Column names.

    Returns
    -------
    kept : numpy.ndarray of bool
        One per row of ``df``.
    probability : numpy.ndarray of float64
        Each row's inclusion probability (1 for sites and hard negatives).
    """
    kept, prob, _ = _plan(df, (rules or SamplingRules()).validate(), seed, gene_column,
                          label_column, position_column)
    return kept, prob


def sample_gene_rows(df: pd.DataFrame, rules: SamplingRules | None = None, seed: int = 42, *,
                     gene_column: str = "gene_id", label_column: str = "splice_type",
                     position_column: str = "position", weight_column: str = WEIGHT_COLUMN,
                     return_rest: bool = False) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Sample the rows of whole full-body genes; add ``sample_weight = 1 / inclusion probability``.

    Pure pandas (runs inside a worker task). The result depends only on ``seed`` and each
    gene's rows, not on which other genes ``df`` holds (see :func:`sample_mask`).

    Parameters
    ----------
    df : pandas.DataFrame
        Every row of one or more genes.
    rules : SamplingRules, optional
        Defaults to ``SamplingRules()``.
    seed : int, default 42
        Sampling seed.
    gene_column, label_column, position_column : str
        Column names.
    weight_column : str, default "sample_weight"
        Output weight column. When ``df`` already has it (a sample of a sample), the new
        weight is the old one divided by the inclusion probability.
    return_rest : bool, default False
        Also return the rows left out (all negatives), with their ``inclusion_probability``,
        e.g. for a model to score them in a hard-negative mining round.

    Returns
    -------
    pandas.DataFrame or (pandas.DataFrame, pandas.DataFrame)
        The kept rows in their input order with ``weight_column`` (float64); with
        ``return_rest``, also the left-out rows.
    """
    kept, prob = sample_mask(df, rules, seed, gene_column=gene_column, label_column=label_column,
                             position_column=position_column)
    prior = (df[weight_column].to_numpy(np.float64) if weight_column in df
             else np.ones(len(df)))
    out = df.loc[kept].copy()
    out[weight_column] = prior[kept] / prob[kept]
    if not return_rest:
        return out
    rest = df.loc[~kept].copy()
    rest[PROBABILITY_COLUMN] = prob[~kept]
    return out, rest


def read_unsampled(dataset: Dataset, genes: Iterable[str], rules: SamplingRules | None = None,
                   seed: int = 42, *, files: Iterable[str] | None = None,
                   columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The rows of ``genes`` that the sample with ``(rules, seed)`` left out (all negatives).

    Run it inside a worker task: it reads the genes' full bodies (from ``files`` when known,
    as the gene index gives them). ``columns`` limits the returned columns (the ones the
    rules need are read anyway); the rows carry ``inclusion_probability``.
    """
    rules = (rules or SamplingRules()).validate()
    need = [dataset.gene_column, dataset.label_column, "position", *rules.score_columns]
    cols = None if columns is None else list(dict.fromkeys([*need, *columns]))
    df = dataset.read_genes(list(genes), cols, files=files)
    _, rest = sample_gene_rows(df, rules, seed, gene_column=dataset.gene_column,
                               label_column=dataset.label_column, return_rest=True)
    if columns is not None:
        rest = rest[list(dict.fromkeys([*columns, PROBABILITY_COLUMN]))]
    return rest.reset_index(drop=True)


# -- a sampled dataset, written by the workers ----------------------------------------------

def _output_schema(dataset: Dataset, weight_column: str) -> pa.Schema:
    """One arrow schema for every output file: the union of the inputs' columns and types."""
    types: dict[str, pa.DataType] = {}
    for f in dataset.files:
        for fld in _read_footer(dataset.fs, f)[1]:
            old = types.get(fld.name)
            if old is None or pa.types.is_null(old):
                types[fld.name] = fld.type
            elif old != fld.type and not pa.types.is_null(fld.type):
                types[fld.name] = pa.float64()  # int in one file, float in another
    fields = [pa.field(c, types.get(c, pa.float64())) for c in dataset.schema.columns]
    if weight_column not in dataset.schema.columns:
        fields.append(pa.field(weight_column, pa.float64()))
    return pa.schema(fields)


def _sample_part(dataset: Dataset, genes: list[str], files: list[str], rules: SamplingRules,
                 seed: int, path: str, schema: pa.Schema, weight_column: str) -> pd.DataFrame:
    """Worker task: read ``genes``, sample them, write ``path``; return per-gene counts."""
    df = dataset.read_genes(genes, files=files)
    kept, prob, stratum = _plan(df, rules, seed, dataset.gene_column, dataset.label_column,
                                "position")
    prior = (df[weight_column].to_numpy(np.float64) if weight_column in df else np.ones(len(df)))
    out = df.loc[kept].copy()
    out[weight_column] = prior[kept] / prob[kept]
    table = pa.Table.from_pandas(out[schema.names], schema=schema, preserve_index=False)
    pq.write_table(table.replace_schema_metadata(None), path, compression="snappy")
    keys = gene_keys(df[dataset.gene_column])
    codes = encode_labels(df[dataset.label_column], dataset.label_column)
    counts = pd.DataFrame({"gene_id": keys, "n_positions": 1, "n_rows": kept.astype(int),
                           "n_donor": (codes == 1).astype(int), "n_acceptor": (codes == 2).astype(int),
                           **{f"n_{s}": (kept & (stratum == i)).astype(int)
                              for i, s in enumerate(STRATA) if s != "site"},
                           "weight_sum": np.where(kept, prior / prob, 0.0)})
    summary = counts.groupby("gene_id", sort=True).sum().reset_index()
    summary.insert(1, "file", os.path.basename(path))
    return summary


def _default_client() -> Any:
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def _prepare(out: pathlib.Path, overwrite: bool) -> pathlib.Path:
    if out.exists() and not out.is_dir():
        raise OutputError(f"The output path {out} exists and is not a directory; choose another path.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"The output directory {out} exists and is not empty; choose another path "
                          "or pass overwrite=True to replace it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    (tmp / "master").mkdir(parents=True)
    return tmp


def write_sampled_dataset(dataset: str | os.PathLike[str] | Dataset, out_dir: str | os.PathLike[str],
                          rules: SamplingRules | None = None, seed: int = 42, *, client: Any = None,
                          genes: Iterable[str] | None = None, index: GeneIndex | None = None,
                          max_rows_per_task: int = 2_000_000, overwrite: bool = False,
                          progress: Callable[[int, int], None] | None = None) -> pathlib.Path:
    """Sample a full-body dataset per gene on the Dask workers and write it as a dataset.

    One task per group of genes held by the same files (at most ``max_rows_per_task`` input
    rows, whole genes): it reads its rows (:meth:`Dataset.read_genes`), samples them
    (:func:`sample_gene_rows`) and writes ``out_dir/master/batch_NNNNN.parquet`` itself.
    Only per-gene counts come back, so client memory does not grow with the number of rows.
    The output is written into a temporary sibling directory and renamed into place when
    complete; it holds ``master/gene_manifest.csv`` (per gene: file, kept rows, positions,
    sites, kept rows per stratum, weight sum) and ``sampling.json`` (rules, seed, source,
    totals). :func:`~metadask.dataset.source.open_dataset` opens ``out_dir`` as an ordinary
    dataset whose ``sample_weight`` column is metadata.

    Parameters
    ----------
    dataset : str, path-like or Dataset
        A labelled full-body dataset (every position of each gene; see ``metadask inspect``).
    out_dir : str or path-like
        Output directory on a filesystem the workers share with the client.
    rules : SamplingRules, optional
        Defaults to ``SamplingRules()``.
    seed : int, default 42
        Sampling seed (the sample does not depend on the cluster or the task grouping).
    client : distributed.Client, optional
        Defaults to the current client; without one the tasks run in this process.
    genes : iterable of str, optional
        Sample only these genes (e.g. the training genes).
    index : GeneIndex, optional
        The dataset's gene index when already built (else one index pass runs first).
    max_rows_per_task : int, default 2,000,000
        Input rows per task (bounds a worker's memory); a larger gene is a task of its own.
    overwrite : bool, default False
        Replace a non-empty ``out_dir`` (otherwise an :class:`OutputError`).
    progress : callable, optional
        Called as ``progress(files_done, files_total)``; a log line per file is written too.

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    rules = (rules or SamplingRules()).validate()
    if not isinstance(max_rows_per_task, int) or max_rows_per_task < 1:
        raise option_error("max_rows_per_task", "must be an integer >= 1", max_rows_per_task,
                           "Use for example 2000000.")
    ds = open_dataset(dataset)
    missing = [c for c in ("position", *rules.score_columns) if c not in ds.schema.columns]
    if missing:
        raise DatasetError(f"Dataset '{ds.url}' lacks {preview(missing)}, which sampling needs "
                           "(a full-body dataset has a position and base scores per row).")
    client = client if client is not None else _default_client()
    if index is None:
        if client is not None:
            with client.as_current():
                index = build_gene_index(ds)
        else:
            index = build_gene_index(ds)
    if index.is_full_body is False:
        log.warning("Dataset %s is not full-body (%d of %d genes have contiguous positions); its "
                    "rows are sampled again and the weights refer to its rows, not to gene bodies.",
                    ds.url, int(index.contiguous.sum()), index.n_genes)
    wanted = index.genes if genes is None else sorted(set(map(str, genes)))
    check_genes(index, wanted)
    groups = [(list(gs.genes), list(gs.files)) for gs, _ in gene_partitions(index, wanted, max_rows_per_task)]
    out = pathlib.Path(out_dir)
    tmp = _prepare(out, overwrite)
    schema = _output_schema(ds, WEIGHT_COLUMN)
    try:
        summaries = _run(ds, groups, rules, seed, tmp / "master", schema, client, progress)
        manifest = pd.concat(summaries, ignore_index=True).sort_values("gene_id", kind="stable")
        with open(tmp / "master" / "gene_manifest.csv", "w", newline="", encoding="utf-8") as fh:
            manifest.to_csv(fh, index=False, lineterminator="\n")
        totals = {k: int(manifest[k].sum()) for k in manifest if k.startswith("n_")}
        info = {"format": _FORMAT, "source": ds.url, "seed": int(seed), "rules": rules.to_dict(),
                "genes": len(manifest), **totals, "weight_sum": float(manifest["weight_sum"].sum()),
                "fraction_kept": totals["n_rows"] / max(1, totals["n_positions"]),
                "weight_column": WEIGHT_COLUMN}
        (tmp / "sampling.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("Sampled %d genes: %d of %d rows kept (%.2f %%) -> %s", info["genes"], totals["n_rows"],
             totals["n_positions"], 100 * info["fraction_kept"], out)
    return out


def _run(ds: Dataset, groups: list[tuple[list[str], list[str]]], rules: SamplingRules, seed: int,
         master: pathlib.Path, schema: pa.Schema, client: Any,
         progress: Callable[[int, int], None] | None) -> list[pd.DataFrame]:
    total = len(groups)
    paths = [str(master / f"batch_{i:05d}.parquet") for i in range(total)]
    summaries: list[pd.DataFrame] = []

    def done(summary: pd.DataFrame) -> None:
        summaries.append(summary)
        log.info("sampling: file %d/%d written (%s: %d genes, %d of %d rows kept)", len(summaries),
                 total, summary["file"].iloc[0], len(summary), int(summary["n_rows"].sum()),
                 int(summary["n_positions"].sum()))
        if progress is not None:
            progress(len(summaries), total)

    if client is None:
        for (genes, files), path in zip(groups, paths):
            done(_sample_part(ds, genes, files, rules, seed, path, schema, WEIGHT_COLUMN))
        return summaries

    token = uuid.uuid4().hex[:8]
    futures = [client.submit(_sample_part, ds, genes, files, rules, seed, path, schema, WEIGHT_COLUMN,
                             key=f"metadask-sample-{i}-{token}", pure=False)
               for i, ((genes, files), path) in enumerate(zip(groups, paths))]
    try:
        for fut in watched(client, futures, "the sampling tasks"):
            done(fut.result())
    finally:
        for fut in futures:
            fut.release()
    return summaries


def _swap_in(tmp: pathlib.Path, out: pathlib.Path) -> None:
    """Rename the finished ``tmp`` to ``out`` (an existing ``out`` is moved aside, then removed)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

