"""Hard-negative mining on full-body training data (``metadask train --hard-negative-rounds N``).

After a training round, the negatives that the library's sample left out are scored on the
workers and the hardest are added to the sample, which the next round trains on. Per gene:

* the candidates are the gene's unsampled negatives (not kept by the sampling rules, not
  mined before), scored by a model that **trained on that gene** (the round's final model:
  it saw every training gene), so no model ever mines a gene held out from it;
* the ``per_site x sites`` best-scoring candidates (at least ``min_per_gene``) whose splice
  score ``p_donor + p_acceptor`` reaches ``min_score`` are added with weight 1 (they are
  now kept with certainty);
* the sampled rows of the random strata (near, easy) are reweighted so each stratum's
  weights still sum to its number of positions: ``(N_s - mined_s) / sampled_s``. Weighted
  sums over the sample thus still estimate sums over the full body.

The held-out genes of a fold are never in that fold's training rows, whatever was mined from
them, and the full-body evaluation scores every position of every gene with the fold model
that never saw it, independent of which rows were sampled or mined. One second-order effect
remains and is documented: the final model that chooses a training gene's mined rows saw
every gene, including other folds' held-out genes.

Each task reads its genes' full bodies and their current sample, writes its own parquet
file; only per-gene counts reach the client.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from metadask.cluster.watch import watched
from metadask.dataset.index import GeneIndex
from metadask.dataset.rows import gene_partitions
from metadask.dataset.sampling import SamplingRules, _plan
from metadask.dataset.schema import MINED_COLUMN, WEIGHT_COLUMN, encode_labels, gene_keys
from metadask.dataset.source import Dataset
from metadask.errors import option_error
from metadask.io import atomic_write_dir
from metadask.models.base import MetaModel
from metadask.models.thresholds import splice_score

log = logging.getLogger("metadask")

RANDOM_STRATA = (2, 3)
"""Stratum codes of :func:`metadask.dataset.sampling._plan` that are sampled at random (near, easy)."""


@dataclass(frozen=True)
class MiningRules:
    """How many unsampled negatives a round adds per gene (see the module docstring)."""

    per_site: float = 2.0
    min_per_gene: int = 5
    min_score: float = 0.01

    def validate(self) -> MiningRules:
        if not isinstance(self.per_site, (int, float)) or self.per_site < 0:
            raise option_error("mining per_site", "must be a number >= 0", self.per_site, "Use e.g. 2.")
        if not isinstance(self.min_per_gene, int) or self.min_per_gene < 0:
            raise option_error("mining min_per_gene", "must be an integer >= 0", self.min_per_gene, "Use e.g. 5.")
        if not isinstance(self.min_score, (int, float)) or not 0 <= self.min_score < 1:
            raise option_error("mining min_score", "must be in [0, 1)", self.min_score, "Use e.g. 0.01.")
        return self


def mine_part(full: Dataset, sample: Dataset, genes: list[str], files: list[str], sample_files: list[str],
              model: MetaModel, sampling: SamplingRules, seed: int, rules: MiningRules, round_: int, path: str,
              schema: pa.Schema) -> pd.DataFrame:
    """Worker task: one group of genes' next sample (current sample + mined rows), written to ``path``."""
    gcol, lcol = full.gene_column, full.label_column
    df = full.read_genes(genes, files=files)
    kept, _, stratum = _plan(df, sampling, seed, gcol, lcol, "position")
    keys = gene_keys(df[gcol])
    pos = df["position"].to_numpy(np.int64)
    # rows mined in earlier rounds (their round), from the current sample
    prev = sample.read_genes(genes, [gcol, "position", *([MINED_COLUMN] if MINED_COLUMN in sample.schema.columns else [])],
                             files=sample_files)
    mined = np.zeros(len(df), dtype=np.int16)
    if MINED_COLUMN in prev and len(prev):
        earlier = prev[prev[MINED_COLUMN] > 0]
        where = pd.MultiIndex.from_arrays([keys, pos]).get_indexer(
            pd.MultiIndex.from_arrays([gene_keys(earlier[gcol]), earlier["position"].to_numpy(np.int64)]))
        mined[where[where >= 0]] = earlier[MINED_COLUMN].to_numpy()[where >= 0]
    codes = encode_labels(df[lcol], lcol)
    candidates = np.flatnonzero(~kept & (mined == 0) & (codes == 0))
    score = np.zeros(len(df))
    if len(candidates):
        score[candidates] = splice_score(model.predict_proba(df.iloc[candidates]))
    for gene, idx in pd.Series(np.arange(len(df))).groupby(keys, sort=False).indices.items():
        cand = idx[np.isin(idx, candidates)]
        cand = cand[score[cand] >= rules.min_score]
        budget = max(rules.min_per_gene, int(round(rules.per_site * int((codes[idx] > 0).sum()))))
        if len(cand) and budget:
            best = cand[np.argsort(-score[cand], kind="stable")[:budget]]
            mined[best] = round_
    keep = kept | (mined > 0)
    weight = np.ones(len(df))
    for gene, idx in pd.Series(np.arange(len(df))).groupby(keys, sort=False).indices.items():
        for s in RANDOM_STRATA:
            rows = idx[stratum[idx] == s]
            sampled = rows[kept[rows] & (mined[rows] == 0)]
            if len(sampled):
                weight[sampled] = (len(rows) - int((mined[rows] > 0).sum())) / len(sampled)
    out = df.loc[keep].copy()
    out[WEIGHT_COLUMN] = weight[keep]
    out[MINED_COLUMN] = mined[keep]
    table = pa.Table.from_pandas(out[schema.names], schema=schema, preserve_index=False)
    pq.write_table(table.replace_schema_metadata(None), path, compression="snappy")
    return pd.DataFrame({"gene_id": keys, "n_positions": 1, "n_rows": keep.astype(int),
                         "n_mined": (mined == round_).astype(int), "n_mined_total": (mined > 0).astype(int),
                         "weight_sum": np.where(keep, weight, 0.0)}).groupby("gene_id", sort=True).sum().reset_index()


def _schema(full: Dataset) -> pa.Schema:
    from metadask.dataset.sampling import _output_schema

    base = _output_schema(full, WEIGHT_COLUMN)
    return base if MINED_COLUMN in base.names else base.append(pa.field(MINED_COLUMN, pa.int16()))


def mine_round(full: Dataset, full_index: GeneIndex, sample: Dataset, sample_index: GeneIndex, model: MetaModel,
               out_dir: pathlib.Path, *, sampling: SamplingRules, seed: int, rules: MiningRules, round_: int,
               client: Any, max_rows: int = 2_000_000) -> pathlib.Path:
    """Write round ``round_``'s sample (``out_dir``): the current sample plus each gene's hardest negatives."""

    rules.validate()
    genes = [str(g) for g in sample_index.genes]
    schema = _schema(full)
    scattered = client.scatter(model, broadcast=False, hash=False)
    parts = gene_partitions(full_index, genes, max_rows=max_rows)
    info: dict[str, Any] = {}

    def write(tmp: pathlib.Path) -> None:
        (tmp / "master").mkdir()
        futures = {}
        for i, (gs, _) in enumerate(parts):
            path = str(tmp / "master" / f"batch_{i:05d}.parquet")
            fut = client.submit(mine_part, full, sample, list(gs.genes), list(gs.files),
                                sample_index.files_for(gs.genes), scattered, sampling, seed, rules, round_, path, schema,
                                pure=False, key=f"metadask-mine-r{round_}-{i}-{uuid.uuid4().hex[:6]}")
            futures[fut] = i
        summaries = []
        t0 = time.perf_counter()
        for n, fut in enumerate(watched(client, list(futures), "the hard-negative mining tasks"), 1):
            part = fut.result()
            summaries.append(part)
            log.info("[%d/%d] hard-negative mining round %d: %d genes, %d negatives added (elapsed %.0f s)", n,
                     len(futures), round_, len(part), int(part["n_mined"].sum()), time.perf_counter() - t0)
        manifest = pd.concat(summaries, ignore_index=True).sort_values("gene_id", kind="stable")
        manifest.to_csv(tmp / "master" / "gene_manifest.csv", index=False)
        info.update({"round": round_, "source": full.url, "seed": seed, "sampling": sampling.to_dict(),
                     "mining": asdict(rules), "n_rows": int(manifest["n_rows"].sum()),
                     "n_positions": int(manifest["n_positions"].sum()), "n_mined": int(manifest["n_mined"].sum()),
                     "n_mined_total": int(manifest["n_mined_total"].sum()),
                     "weight_sum": float(manifest["weight_sum"].sum())})
        (tmp / "sampling.json").write_text(json.dumps(info, indent=2) + "\n")

    atomic_write_dir(out_dir, write)
    log.info("Hard-negative mining round %d: %d negatives added (%d in all rounds); the sample now holds %s of %s "
             "positions (weights sum to %s) -> %s", round_, info["n_mined"], info["n_mined_total"], f"{info['n_rows']:,}",
             f"{info['n_positions']:,}", f"{info['weight_sum']:,.0f}", out_dir)
    return out_dir
