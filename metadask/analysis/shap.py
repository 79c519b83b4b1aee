"""SHAP on a representative sample, computed on the workers.

The client plans the sample from the gene index alone: genes chosen by
:func:`~metadask.dataset.sample.representative_genes`, then per gene and class a row quota
(classes balanced towards splice sites, spread evenly over genes). Workers read only their
partition's genes, draw the rows with a seeded generator, and compute the model's per-class
contributions (``model.contributions``: XGBoost's exact TreeSHAP, ``pred_contribs``; for an
ensemble the weighted member combination in margin space). Each partition stays on its worker;
the client gathers per-feature sums, then the values of the top features only (for plots).

SHAP explains the final model on rows of genes it was trained on: these are explanations,
not generalisation metrics.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metadask.cluster.watch import gather
from metadask.dataset.index import GeneIndex
from metadask.dataset.rows import GeneSet, gene_set, read_rows
from metadask.dataset.sample import representative_genes
from metadask.dataset.schema import LABELS
from metadask.dataset.source import Dataset, gene_keys
from metadask.io import write_csv, write_json
from metadask.models.threads import limit_threads

log = logging.getLogger("metadask")

ROWS_PER_GENE = 50
"""Aim for about this many sampled rows per gene (sets how many genes are read)."""
SPLICE_SHARE = 0.5
"""Share of the sample given to splice sites (half donor, half acceptor), where available."""
TOP_FEATURES = 20
"""Features per class shown in the bar and beeswarm plots."""
ADDITIVITY_TOLERANCE = 1e-4
"""Largest accepted |sum of contributions + bias - margin| / max(1, |margin|) (float32 TreeSHAP)."""

IN_SAMPLE_NOTE = ("rows of genes the final model was trained on: SHAP values explain the model, they are not "
                  "a generalisation metric")


# -- planning (client, gene index only) ------------------------------------------------------------

def spread(available: np.ndarray, total: int) -> np.ndarray:
    """Spread ``total`` draws over groups as evenly as possible, never above ``available``.

    Water-filling: every group gets the same share, groups that run out give their remainder to
    the others; leftover single draws go to the groups with most capacity left (ties by order).
    """
    avail = np.asarray(available, dtype=np.int64)
    total = int(min(max(total, 0), avail.sum()))
    out = np.zeros_like(avail)
    while total > 0:
        room = avail - out
        open_ = np.flatnonzero(room > 0)
        share = total // len(open_)
        if share == 0:
            order = open_[np.argsort(-room[open_], kind="stable")][:total]
            out[order] += 1
            break
        add = np.minimum(room[open_], share)
        out[open_] += add
        total -= int(add.sum())
    return out


@dataclass(frozen=True)
class SamplePlan:
    """Which rows the SHAP / permutation sample holds: per gene, how many rows of each class."""

    quotas: dict[str, tuple[int, int, int]]
    seed: int
    population: dict[str, int] = field(default_factory=dict)

    @property
    def genes(self) -> list[str]:
        return sorted(g for g, q in self.quotas.items() if sum(q) > 0)

    @property
    def n_rows(self) -> int:
        return int(sum(sum(q) for q in self.quotas.values()))

    def class_counts(self) -> dict[str, int]:
        return {name: int(sum(q[k] for q in self.quotas.values())) for k, name in enumerate(LABELS)}

    def partitions(self, n_parts: int) -> list[list[str]]:
        """Contiguous runs of sorted genes (file locality) with about equal row counts."""
        genes = self.genes
        if not genes:
            return []
        rows = np.array([sum(self.quotas[g]) for g in genes], dtype=np.float64)
        n_parts = max(1, min(n_parts, len(genes)))
        cut = np.searchsorted(np.cumsum(rows), rows.sum() * np.arange(1, n_parts) / n_parts, side="left")
        bounds = [0, *sorted(set(int(c) + 1 for c in cut)), len(genes)]
        return [genes[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def plan_sample(index: GeneIndex, n_rows: int, *, seed: int = 42, rows_per_gene: int = ROWS_PER_GENE,
                splice_share: float = SPLICE_SHARE) -> SamplePlan:
    """Plan a sample of about ``n_rows`` rows, stratified by class and by gene.

    Donor and acceptor rows get ``splice_share / 2`` of the sample each (up to what the chosen
    genes hold), neither rows the rest; within a class the rows are spread evenly over genes.
    Enough genes are chosen for about ``rows_per_gene`` rows per gene and for the splice quotas.
    """
    t = index.table
    n = int(min(n_rows, index.n_rows))
    targets = np.array([0, int(n * splice_share / 2), int(n * splice_share / 2)])
    targets[0] = n - targets[1:].sum()
    per_gene = np.array([t[f"n_{c}"].mean() for c in LABELS], dtype=np.float64)
    need = [np.ceil(n / max(rows_per_gene, 1))]
    need += [np.ceil(2 * targets[k] / per_gene[k]) for k in (1, 2) if per_gene[k] > 0]
    n_genes = int(min(len(t), max(1, *need)))
    genes = representative_genes(index, n_genes, seed=seed)
    avail = t.loc[genes, [f"n_{c}" for c in LABELS]].to_numpy(dtype=np.int64)
    alloc = np.zeros_like(avail)
    for k in (1, 2, 0):  # splice classes first; neither fills what they could not take
        target = targets[k] if k else n - alloc.sum()
        alloc[:, k] = spread(avail[:, k], target)
    quotas = {g: tuple(int(v) for v in alloc[i]) for i, g in enumerate(genes)}
    return SamplePlan(quotas=quotas, seed=seed, population=index.label_counts())


# -- worker side ------------------------------------------------------------------------------------

@dataclass
class SamplePart:
    """One partition of the sample, kept on its worker."""

    gene: np.ndarray
    position: np.ndarray
    y: np.ndarray
    x: np.ndarray
    margin: np.ndarray
    contributions: np.ndarray | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def choose_rows(genes: np.ndarray, y: np.ndarray, quotas: dict[str, tuple[int, int, int]], seed: int) -> np.ndarray:
    """Row positions drawn per gene and class; the same genes, rows and seed give the same draw."""
    chosen = []
    for g in sorted(quotas):
        rng = np.random.default_rng([seed, zlib.crc32(str(g).encode())])
        in_gene = genes == g
        for k, q in enumerate(quotas[g]):
            rows = np.flatnonzero(in_gene & (y == k))
            if q and len(rows):
                chosen.append(rng.choice(rows, size=min(q, len(rows)), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def sample_partition(dataset: Dataset, features: Sequence[str], gs: GeneSet, quotas: dict[str, tuple[int, int, int]],
                     seed: int, model: Any, contributions: bool = True) -> SamplePart:
    """Read a partition's genes, draw its rows, predict margins and (optionally) contributions."""
    t0 = time.perf_counter()
    x, y, meta = read_rows(dataset, gs, features)
    genes = gene_keys(meta[dataset.gene_column])
    sel = choose_rows(genes, y, quotas, seed)
    t_read = time.perf_counter() - t0
    xs = np.ascontiguousarray(x[sel])
    del x
    part = SamplePart(
        gene=genes[sel], y=y[sel].astype(np.int8), x=xs,
        position=meta["position"].to_numpy()[sel] if "position" in meta else sel,
        margin=np.empty((len(sel), len(LABELS))),
    )
    t1 = time.perf_counter()
    with limit_threads():
        part.margin = model.predict_margin(xs) if len(sel) else np.empty((0, len(LABELS)))
        t_margin = time.perf_counter() - t1
        stats: dict[str, Any] = {"rows": int(len(sel)), "read_seconds": t_read, "margin_seconds": t_margin}
        if contributions:
            t2 = time.perf_counter()
            c = model.contributions(xs) if len(sel) else np.zeros((0, len(LABELS), len(features) + 1))
            stats["contrib_seconds"] = time.perf_counter() - t2
            c = np.asarray(c, dtype=np.float64)
            err = np.abs(c.sum(axis=2) - part.margin)
            stats["abs_sum"] = np.abs(c).sum(axis=0)
            stats["sum"] = c.sum(axis=0)
            stats["max_abs_error"] = float(err.max()) if err.size else 0.0
            stats["max_rel_error"] = float((err / np.maximum(1.0, np.abs(part.margin))).max()) if err.size else 0.0
            stats["max_abs_margin"] = float(np.abs(part.margin).max()) if err.size else 0.0
            part.contributions = c.astype(np.float32)
    part.stats = stats
    return part


def part_stats(part: SamplePart) -> dict[str, Any]:
    return part.stats


def part_slice(part: SamplePart, columns: Sequence[int]) -> dict[str, np.ndarray]:
    """Ids, labels, bias and the contributions / feature values of ``columns`` only."""
    cols = list(columns)
    out = {"gene": part.gene, "position": part.position, "y": part.y, "x": part.x[:, cols]}
    if part.contributions is not None:
        out["values"] = part.contributions[:, :, cols]
        out["bias"] = part.contributions[:, :, -1]
    return out


def part_rows(part: SamplePart, fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Features, labels and margins of a seeded ``fraction`` of the partition's rows (no contributions)."""
    n = len(part.y)
    keep = np.arange(n)
    if fraction < 1.0 and n:
        rng = np.random.default_rng([seed, n])
        keep = np.sort(rng.choice(n, size=max(1, int(round(n * fraction))), replace=False))
    return {"x": part.x[keep], "y": part.y[keep], "margin": part.margin[keep]}


# -- client side ----------------------------------------------------------------------------------------

@dataclass
class Sample:
    """The sample's partitions (futures held on the workers) and its plan."""

    plan: SamplePlan
    parts: list[Any]
    model: Any
    features: list[str]
    contributions: bool
    requested: int = 0
    kind: str = ""

    def release(self) -> None:
        for f in [*self.parts, self.model]:
            if hasattr(f, "release"):
                f.release()


def draw_sample(client: Any, dataset: Dataset, index: GeneIndex, features: Sequence[str], model: Any, *,
                n_rows: int, seed: int, n_parts: int, contributions: bool) -> Sample:
    """Plan the sample and submit one task per partition (results stay on the workers)."""
    plan = plan_sample(index, n_rows, seed=seed)
    model_future = client.scatter(model, hash=False)
    parts = []
    for i, genes in enumerate(plan.partitions(n_parts)):
        gs = gene_set(index, genes)
        quotas = {g: plan.quotas[g] for g in genes}
        parts.append(client.submit(sample_partition, dataset, list(features), gs, quotas, seed, model_future, contributions,
                                   key=f"metadask-sample-{i}-{seed}-{time.time_ns()}", pure=False, retries=1))
    return Sample(plan=plan, parts=parts, model=model_future, features=list(features), contributions=contributions,
                  requested=int(n_rows), kind=str(getattr(model, "kind", type(model).__name__)))


@dataclass
class ShapResult:
    """Mean |SHAP| per feature and class, additivity, and the top features' values (for plots)."""

    table: pd.DataFrame
    summary: dict[str, Any]
    top: dict[str, list[int]]
    values: dict[str, np.ndarray]


def compute_shap(client: Any, sample: Sample, top_n: int = TOP_FEATURES) -> ShapResult:
    """Gather per-partition sums into mean |SHAP| per feature and class; fetch the top features' values."""
    t0 = time.perf_counter()
    stats = gather(client, [client.submit(part_stats, p, pure=False) for p in sample.parts], "the SHAP tasks")
    n = sum(s["rows"] for s in stats)
    features = sample.features
    abs_sum = sum(s["abs_sum"] for s in stats)
    signed = sum(s["sum"] for s in stats)
    mean_abs, mean = abs_sum / max(n, 1), signed / max(n, 1)
    rows = []
    top: dict[str, list[int]] = {}
    for k, cls in enumerate(LABELS):
        order = np.argsort(-mean_abs[k, :-1], kind="stable")
        rank = np.empty(len(features), dtype=np.int64)
        rank[order] = np.arange(1, len(features) + 1)
        top[cls] = [int(j) for j in order[: min(top_n, len(features))]]
        rows += [{"feature": f, "cls": cls, "mean_abs_shap": float(mean_abs[k, j]), "mean_shap": float(mean[k, j]),
                  "shap_rank": int(rank[j])} for j, f in enumerate(features)]
    table = pd.DataFrame(rows)
    columns = sorted({j for v in top.values() for j in v})
    slices = gather(client, [client.submit(part_slice, p, columns, pure=False) for p in sample.parts], "the SHAP value slices")
    values = {key: np.concatenate([s[key] for s in slices]) for key in slices[0]} if slices else {}
    values["columns"] = np.asarray(columns)
    max_abs = max((s["max_abs_error"] for s in stats), default=0.0)
    max_rel = max((s["max_rel_error"] for s in stats), default=0.0)
    plan = sample.plan
    summary = {
        "method": (f"model.contributions of the '{sample.kind}' model, per one-vs-rest class in margin (log-odds) "
                   "space: boosters give XGBoost pred_contribs (exact path-dependent TreeSHAP), an ensemble the "
                   "weighted combination of its members' contributions, a linear model coefficient x standardised value"),
        "model": sample.kind,
        "computed_on": f"{len(sample.parts)} worker tasks (partitions of sample genes)",
        "in_sample": True,
        "note": IN_SAMPLE_NOTE,
        "sample": {
            "rows": n, "genes": len(plan.genes), "requested_rows": sample.requested, "seed": plan.seed,
            "class_counts": plan.class_counts(), "population_class_counts": plan.population,
            "stratification": (f"genes by representative_genes (row count x splice-site quartiles); per class "
                               f"{SPLICE_SHARE:.0%} splice sites (half donor, half acceptor) where available, "
                               "rows spread evenly over genes"),
        },
        "additivity": {
            "check": "sum of contributions + bias == model margin",
            "max_abs_error": max_abs, "max_rel_error": max_rel,
            "max_abs_margin": max((s["max_abs_margin"] for s in stats), default=0.0),
            "tolerance_rel": ADDITIVITY_TOLERANCE,
            "tolerance_note": "relative to max(1, |margin|): TreeSHAP values are float32",
            "passed": bool(max_rel <= ADDITIVITY_TOLERANCE),
        },
        "base_value": {cls: float(np.mean(values["bias"][:, k])) if "bias" in values and n else float("nan")
                       for k, cls in enumerate(LABELS)},
        "top_features": {cls: [features[j] for j in top[cls]] for cls in LABELS},
        "seconds": {
            "worker_read": float(sum(s["read_seconds"] for s in stats)),
            "worker_contributions": float(sum(s.get("contrib_seconds", 0.0) for s in stats)),
            "gather": time.perf_counter() - t0,
        },
    }
    if not summary["additivity"]["passed"]:
        log.warning("SHAP additivity: max relative error %.2e exceeds %.0e", max_rel, ADDITIVITY_TOLERANCE)
    return ShapResult(table=table, summary=summary, top=top, values=values)


def shap_wide(table: pd.DataFrame) -> pd.DataFrame:
    """One row per feature: mean |SHAP| and mean SHAP per class, sorted by the class average."""
    wide = table.pivot(index="feature", columns="cls", values=["mean_abs_shap", "mean_shap", "shap_rank"])
    wide.columns = [f"{a}_{c}" for a, c in wide.columns]
    wide = wide[[f"{a}_{c}" for a in ("mean_abs_shap", "mean_shap", "shap_rank") for c in LABELS]]
    wide.insert(0, "mean_abs_shap_all_classes", wide[[f"mean_abs_shap_{c}" for c in LABELS]].mean(axis=1))
    return wide.sort_values("mean_abs_shap_all_classes", ascending=False).reset_index()


def write_shap(out_dir: Path, result: ShapResult, *, plots: bool) -> list[Path]:
    """Write ``shap_analysis/``: the CSV, the JSON and (unless ``plots`` is False) the figures."""
    d = out_dir / "shap_analysis"
    paths = [write_csv(d / "shap_importance_by_class.csv", shap_wide(result.table), float_format="%.6g"),
             write_json(d / "shap_summary.json", result.summary)]
    if plots and "values" in result.values and len(result.values["y"]):
        from metadask.analysis import plots as P

        columns = list(result.values["columns"])
        features = result.summary["top_features"]
        for k, cls in enumerate(LABELS):
            pos = [columns.index(j) for j in result.top[cls]]
            bar, bee = P.shap_figures(result.values["values"][:, k, pos], result.summary["base_value"][cls],
                                      result.values["x"][:, pos], features[cls], cls, seed=result.summary["sample"]["seed"])
            try:
                paths += P.save_figure(bar, d / f"shap_bar_{cls}", ("png",), tight=True)
                paths += P.save_figure(bee, d / f"shap_beeswarm_{cls}", ("png",), tight=True)
            finally:
                P.close(bar, bee)
    return paths
