"""Full-body evaluation: score every position of each gene, base and meta side by side.

Users scan every position of a gene, not the sampled rows a dataset keeps, so this is the
evaluation that decides thresholds and is reported first. It runs out of core: each worker
task reads a group of whole genes, scores them with the model that never saw them (the CV
fold model of a training gene, the final model otherwise) and returns **sufficient
statistics** only: per model, task and score bin the counts of positives and negatives, exact
counts at fixed thresholds, and per-gene top-k hits. The client merges them; no row and no
prediction reaches it, so a genome costs the client what a gene does.

Scores are binned on a fine logit grid (:data:`N_BINS` bins of width 1/512 on [-16, 16]);
thresholds are bin edges, so F1 at any edge (0.5 is one) is exact; average precision and
global top-k treat a bin as one tie group (differences from the exact values are below 1e-3,
tested). Tasks: ``donor`` (score p_donor, positives the donors), ``acceptor``, and ``splice``
(score p_donor + p_acceptor, positives every site: the binary splice-vs-neither call).
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from metadask.cluster.watch import watched
from metadask.dataset.rows import GeneSet, gene_partitions
from metadask.dataset.schema import BASE_SCORE_COLUMNS, LABELS, is_kmer
from metadask.dataset.source import Dataset, label_vector
from metadask.errors import DatasetError, ModelError, preview
from metadask.models.base import MetaModel
from metadask.models.thresholds import splice_score
from metadask.results import OOFParts

log = logging.getLogger("metadask")

MODELS = ("base", "meta")
TASKS = ("donor", "acceptor", "splice")
LOGIT_RANGE = 16.0
BINS_PER_UNIT = 512
N_BINS = int(2 * LOGIT_RANGE * BINS_PER_UNIT)
EDGES = np.linspace(-LOGIT_RANGE, LOGIT_RANGE, N_BINS + 1)
"""Bin edges on the logit scale; edge ``N_BINS // 2`` is logit 0 = probability 0.5."""
HALF = N_BINS // 2
UNSEEN = -1
"""The fold of a gene no training fold held (scored by the final model)."""
PSEUDO_FOLDS = 5
"""Groups of unseen genes (by a hash of the gene id, statistics groups -2..-6) over which the
base model's threshold is cross-fitted when no CV folds exist (``metadask evaluate``)."""
METRIC_KEYS = ("positions", "genes", "sites_donor", "sites_acceptor", "ap_donor", "ap_acceptor", "f1_at_0.5",
               "f1_at_threshold", "threshold", "best_f1", "best_threshold", "topk_donor", "topk_acceptor",
               "topk_gene_donor", "topk_gene_acceptor", "fp_at_0.5", "fp_at_threshold", "fp_per_10kb",
               "fp_per_10kb_at_0.5", "precision_at_threshold", "recall_at_threshold")


def edge_probability(edge: int | np.ndarray) -> np.ndarray | float:
    """The probability at bin edge ``edge`` (scores >= it fall in bins >= ``edge``)."""
    z = EDGES[np.asarray(edge)]
    return 1.0 / (1.0 + np.exp(-z))


def bin_of(p: np.ndarray) -> np.ndarray:
    """Bin index of each probability (clipped into the grid)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-300, 1.0)
    with np.errstate(divide="ignore"):
        z = np.log(p) - np.log1p(-np.minimum(p, 1 - 1e-16))
    idx = np.floor(z * BINS_PER_UNIT) + HALF  # z scaled first: a score just below 0.5 stays below the 0.5 edge
    return np.clip(idx, 0, N_BINS - 1).astype(np.int64)


def threshold_edge(t: float) -> int:
    """The bin edge used for threshold ``t`` (the edge at or just above it)."""
    z = np.log(t) - np.log1p(-t) if t < 1 else LOGIT_RANGE
    return int(np.clip(np.ceil((z + LOGIT_RANGE) * BINS_PER_UNIT - 1e-9), 0, N_BINS))


@dataclass
class ScoreStats:
    """Mergeable sufficient statistics of scored positions (one fold, or all).

    ``hist[m, t, c, b]``: weight of rows of model ``m`` (:data:`MODELS`), task ``t``
    (:data:`TASKS`), class ``c`` (0 negative, 1 positive) whose score falls in bin ``b``.
    ``gene_topk[m, k]``: per splice class ``k`` (donor, acceptor), (hits, sites, sum of
    per-gene accuracies, genes with sites).
    """

    hist: np.ndarray = field(default_factory=lambda: np.zeros((len(MODELS), len(TASKS), 2, N_BINS)))
    gene_topk: np.ndarray = field(default_factory=lambda: np.zeros((len(MODELS), 2, 4)))
    positions: float = 0.0
    genes: int = 0
    weighted: bool = False

    def merge(self, other: ScoreStats) -> ScoreStats:
        self.hist += other.hist
        self.gene_topk += other.gene_topk
        self.positions += other.positions
        self.genes += other.genes
        self.weighted = self.weighted or other.weighted
        return self

    @classmethod
    def total(cls, parts: Iterable[ScoreStats]) -> ScoreStats:
        out = cls()
        for p in parts:
            out.merge(p)
        return out


def stats_of(y: np.ndarray, base: np.ndarray, meta: np.ndarray, genes: np.ndarray,
             weights: np.ndarray | None = None) -> ScoreStats:
    """Statistics of rows: label codes ``y``, (n x 3) base and meta probabilities, gene ids.

    With ``weights`` (inverse inclusion probabilities of sampled rows), every count is
    weighted so the statistics estimate those of the full bodies the rows were sampled from;
    per-gene top-k is then not defined and left out.
    """
    s = ScoreStats(weighted=weights is not None)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    s.positions = float(w.sum())
    s.genes = int(len(np.unique(genes)))
    for m, proba in enumerate((base, meta)):
        scores = (proba[:, 1], proba[:, 2], splice_score(proba))
        for t, (score, positive) in enumerate(zip(scores, (y == 1, y == 2, y != 0))):
            b = bin_of(score)
            s.hist[m, t, 1] = np.bincount(b[positive], weights=w[positive], minlength=N_BINS)
            s.hist[m, t, 0] = np.bincount(b[~positive], weights=w[~positive], minlength=N_BINS)
        if weights is None:
            s.gene_topk[m] = _gene_topk(y, proba, genes)
    return s


def _gene_topk(y: np.ndarray, proba: np.ndarray, genes: np.ndarray) -> np.ndarray:
    """Per splice class: (hits, sites, sum of per-gene top-k accuracy, genes with sites)."""
    out = np.zeros((2, 4))
    order = np.argsort(genes, kind="stable")
    g_sorted = genes[order]
    starts = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])
    ends = np.r_[starts[1:], len(order)]
    for k, cls in enumerate((1, 2)):
        for a, b in zip(starts, ends):
            rows = order[a:b]
            n_sites = int((y[rows] == cls).sum())
            if n_sites == 0:
                continue
            top = rows[np.argsort(-proba[rows, cls], kind="stable")[:n_sites]]
            hits = int((y[top] == cls).sum())
            out[k] += (hits, n_sites, hits / n_sites, 1)
    return out


# -- metrics from statistics -------------------------------------------------------------
def _cum(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tp, fp) at every edge 0..N_BINS: weight of positives / negatives with bin >= edge."""
    pos = np.r_[np.cumsum(hist[1][::-1])[::-1], 0.0]
    neg = np.r_[np.cumsum(hist[0][::-1])[::-1], 0.0]
    return pos, neg


def f1_curve(hist: np.ndarray) -> np.ndarray:
    tp, fp = _cum(hist)
    fn = tp[0] - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(tp > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return f1


def average_precision(hist: np.ndarray) -> float:
    """AP with each bin a tie group (as scikit-learn treats tied scores)."""
    pos, neg = hist[1][::-1], hist[0][::-1]
    total = pos.sum()
    if total <= 0:
        return float("nan")
    tp, fp = np.cumsum(pos), np.cumsum(neg)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
    return float((precision * pos).sum() / total)


def global_topk(hist: np.ndarray) -> float:
    """SpliceAI's top-k accuracy: k = the number of true sites; the share of them among the k best scores."""
    pos, neg = hist[1][::-1], hist[0][::-1]
    k = pos.sum()
    if k <= 0:
        return float("nan")
    both = pos + neg
    cum = np.cumsum(both)
    j = int(np.searchsorted(cum, k))  # first bin (from the top) where k positions are reached
    before = cum[j - 1] if j > 0 else 0.0
    hits = (pos[:j].sum() if j > 0 else 0.0) + (pos[j] * (k - before) / both[j] if both[j] > 0 else 0.0)
    return float(hits / k)


def best_edge(hist: np.ndarray) -> int:
    return int(np.argmax(f1_curve(hist)))


def _counts_at(hist: np.ndarray, edge: int) -> tuple[float, float, float]:
    tp, fp = _cum(hist)
    return float(tp[edge]), float(fp[edge]), float(tp[0] - tp[edge])


def _f1(tp: float, fp: float, fn: float) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0


def model_metrics(by_fold: Mapping[int, ScoreStats], m: int, *, threshold: float | None = None) -> dict[str, Any]:
    """Metrics of model ``m`` over every fold's statistics.

    ``f1_at_threshold``: at ``threshold`` when given (a model's stored threshold); otherwise
    cross-fitted: each fold's positions are called at the threshold that maximises F1 on the
    other folds' positions, so the F1 is out of fold for the threshold too.
    """
    total = ScoreStats.total(by_fold.values())
    splice = total.hist[m, TASKS.index("splice")]
    if threshold is not None:
        edges = {f: threshold_edge(threshold) for f in by_fold}
    elif len(by_fold) > 1:
        edges = {f: best_edge(sum(s.hist[m, 2] for g, s in by_fold.items() if g != f)) for f in by_fold}
    else:
        edges = {f: best_edge(splice) for f in by_fold}
    tp = fp = fn = 0.0
    for f, s in by_fold.items():
        a, b, c = _counts_at(s.hist[m, 2], edges[f])
        tp, fp, fn = tp + a, fp + b, fn + c
    tp5, fp5, fn5 = _counts_at(splice, HALF)
    best = best_edge(splice)
    gk = total.gene_topk[m]
    positions = max(total.positions, 1.0)
    return {
        "positions": round(total.positions, 3), "genes": total.genes,
        "sites_donor": round(float(total.hist[m, 0, 1].sum()), 3), "sites_acceptor": round(float(total.hist[m, 1, 1].sum()), 3),
        "ap_donor": average_precision(total.hist[m, 0]), "ap_acceptor": average_precision(total.hist[m, 1]),
        "f1_at_0.5": _f1(tp5, fp5, fn5), "f1_at_threshold": _f1(tp, fp, fn),
        "threshold": float(threshold) if threshold is not None else float(edge_probability(best)),
        "best_f1": float(f1_curve(splice)[best]), "best_threshold": float(edge_probability(best)),
        "topk_donor": global_topk(total.hist[m, 0]), "topk_acceptor": global_topk(total.hist[m, 1]),
        "topk_gene_donor": None if total.weighted or gk[0, 3] == 0 else float(gk[0, 2] / gk[0, 3]),
        "topk_gene_acceptor": None if total.weighted or gk[1, 3] == 0 else float(gk[1, 2] / gk[1, 3]),
        "fp_at_0.5": fp5, "fp_at_threshold": fp, "fp_per_10kb": 1e4 * fp / positions, "fp_per_10kb_at_0.5": 1e4 * fp5 / positions,
        "precision_at_threshold": tp / (tp + fp) if tp + fp > 0 else 0.0, "recall_at_threshold": tp / (tp + fn) if tp + fn > 0 else 0.0,
        "threshold_cross_fitted": threshold is None and len(by_fold) > 1,
    }


def full_body_metrics(by_fold: Mapping[int, ScoreStats], *, meta_threshold: float | None = None,
                      source: str) -> dict[str, Any]:
    """``metrics.json``: base and meta side by side, and the thresholds (see docs/analysis.md)."""
    if not by_fold:
        raise DatasetError("Full-body evaluation scored no genes.")
    base = model_metrics(by_fold, 0)
    meta = model_metrics(by_fold, 1, threshold=meta_threshold)
    splice_meta = ScoreStats.total(by_fold.values()).hist[1, 2]
    chosen = float(edge_probability(best_edge(splice_meta)))
    return {
        "source": source,
        "weighted": any(s.weighted for s in by_fold.values()),
        "base": base,
        "meta": meta,
        "thresholds": {
            "meta_stored": meta_threshold if meta_threshold is not None else chosen,
            "meta_chosen_on_these_positions": chosen,
            "meta_per_fold": None if meta_threshold is not None else _per_fold_thresholds(by_fold, 1),
            "base_per_fold": _per_fold_thresholds(by_fold, 0),
            "base_best": base["best_threshold"],
            "rule": "splice site when p_donor + p_acceptor >= threshold (donor or acceptor by the larger)",
        },
        "folds": {str(f): {"positions": s.positions, "genes": s.genes} for f, s in sorted(by_fold.items())},
        "binning": f"{N_BINS} logit bins of width 1/{BINS_PER_UNIT} on [-{LOGIT_RANGE:g}, {LOGIT_RANGE:g}]",
    }


def _per_fold_thresholds(by_fold: Mapping[int, ScoreStats], m: int) -> dict[str, float]:
    if len(by_fold) < 2:
        return {}
    return {str(f): float(edge_probability(best_edge(sum(s.hist[m, 2] for g, s in by_fold.items() if g != f))))
            for f in by_fold}


def curves(by_fold: Mapping[int, ScoreStats], points: int = 400) -> pd.DataFrame:
    """PR and ROC points per model and task (thinned to about ``points`` per curve)."""
    total = ScoreStats.total(by_fold.values())
    rows = []
    for m, model in enumerate(MODELS):
        for t, task in enumerate(TASKS):
            tp, fp = _cum(total.hist[m, t])
            keep = np.unique(np.r_[0, np.flatnonzero(total.hist[m, t].sum(axis=0) > 0), N_BINS])  # edges of non-empty bins
            if len(keep) > points:
                keep = keep[np.linspace(0, len(keep) - 1, points).astype(int)]
            with np.errstate(invalid="ignore", divide="ignore"):
                precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
            recall = tp / tp[0] if tp[0] > 0 else np.zeros_like(tp)
            fpr = fp / fp[0] if fp[0] > 0 else np.zeros_like(fp)
            for e in keep:
                rows.append((model, task, float(edge_probability(e)), recall[e], precision[e], fpr[e], tp[e], fp[e]))
    return pd.DataFrame(rows, columns=["model", "task", "threshold", "recall", "precision", "fpr", "tp", "fp"])


# -- scoring on the workers ----------------------------------------------------------------
def _eval_columns(dataset: Dataset) -> list[str]:
    return [c for c in (dataset.label_column, *BASE_SCORE_COLUMNS) if c in dataset.schema.columns]


def check_eval_dataset(dataset: Dataset, features: Sequence[str]) -> None:
    """Labels, base scores and the model's features must be there (missing k-mers read as 0)."""
    cols = dataset.schema.columns
    if dataset.label_column not in cols:
        raise DatasetError(f"The evaluation dataset {dataset.url} has no label column '{dataset.label_column}'. "
                           "Evaluation needs labelled data; use `metadask predict` for unlabelled data.")
    missing = [c for c in BASE_SCORE_COLUMNS if c not in cols]
    if missing:
        raise DatasetError(f"The evaluation dataset {dataset.url} lacks the base scores {preview(missing)}.")
    lacking = [f for f in features if f not in cols and not is_kmer(f)]
    if lacking:
        raise ModelError(f"The evaluation dataset {dataset.url} lacks {len(lacking)} feature columns the model uses: "
                         f"{preview(lacking)}.")


def score_stats(dataset: Dataset, gs: GeneSet, model: MetaModel,
                calibration_rows: int = 0) -> ScoreStats | tuple[ScoreStats, pd.DataFrame]:
    """Worker task: read the gene set ``gs``, score them with ``model`` and the base model, return statistics.

    With ``calibration_rows`` > 0 it also returns a weighted sample of the scored positions for
    fitting calibrators on the full-body distribution (:func:`calibration_sample`).
    """
    x, meta = dataset.read_matrix(gs.genes, model.features, files=gs.files, columns=_eval_columns(dataset),
                                  gene_rows=gs.rows or None, absent_as_zero=True)  # k-mers it lacks read as 0
    y = label_vector(meta, dataset.label_column)
    base = meta[list(BASE_SCORE_COLUMNS)].to_numpy(dtype=np.float64)
    raw = model.raw_proba(x)
    gene_ids = meta[dataset.gene_column].astype(str).to_numpy()
    stats = stats_of(y, base, model.calibrate(raw, x), gene_ids)
    if not calibration_rows:
        return stats
    return stats, calibration_sample(y, raw, base, gene_ids, calibration_rows)


HARD_SCORE = 0.01
"""Negatives whose base or raw meta donor / acceptor score reaches this are "hard" in the calibration sample."""


def calibration_sample(y: np.ndarray, raw: np.ndarray, base: np.ndarray, genes: np.ndarray, rows: int) -> pd.DataFrame:
    """A weighted sample of scored positions: every site, hard negatives and easy ones, each with 1 / its probability.

    At most about ``rows`` hard and ``rows`` easy negatives per call (seeded by the genes), so the
    client's share stays bounded whatever the number of positions.
    """
    rng = np.random.default_rng(zlib.crc32(("|".join(sorted(set(genes.tolist())))).encode()))
    hard = (y == 0) & ((base[:, 1:].max(axis=1) >= HARD_SCORE) | (raw[:, 1:].max(axis=1) >= HARD_SCORE))
    easy = (y == 0) & ~hard
    p = np.ones(len(y))
    p[hard] = min(1.0, rows / max(1, int(hard.sum())))
    p[easy] = min(0.01, rows / max(1, int(easy.sum())))
    keep = (y != 0) | (rng.random(len(y)) < p)
    out = pd.DataFrame({"gene": genes[keep], "label": y[keep].astype(np.int8), "weight": 1.0 / p[keep]})
    for k, c in enumerate(("neither", "donor", "acceptor")):
        out[f"raw_{c}"] = raw[keep, k]
        out[BASE_SCORE_COLUMNS[k]] = base[keep, k]
    return out


def pseudo_fold(gene: str) -> int:
    return zlib.crc32(str(gene).encode()) % PSEUDO_FOLDS


def score_full_body(
    dataset: Dataset,
    index: Any,
    model_for_fold: Callable[[int], MetaModel],
    gene_folds: Mapping[str, int],
    client: Any,
    *,
    max_rows: int = 400_000,
    pseudo_folds: bool = False,
    calibration_rows: int = 0,
) -> dict[int, ScoreStats] | tuple[dict[int, ScoreStats], pd.DataFrame]:
    """Score every gene of ``dataset`` on the workers; statistics per fold.

    ``gene_folds`` maps a training gene to its CV fold; other genes go to :data:`UNSEEN`
    (or, with ``pseudo_folds``, to a hash group so thresholds can still be cross-fitted) and
    are scored by ``model_for_fold(UNSEEN)``.
    """

    genes = [str(g) for g in index.genes]
    # (model fold, statistics group) per gene: unseen genes may be split into hash groups
    plan: dict[tuple[int, int], list[str]] = {}
    for g in genes:
        f = int(gene_folds.get(g, UNSEEN))
        group = f if f != UNSEEN or not pseudo_folds else -2 - pseudo_fold(g)
        plan.setdefault((f, group), []).append(g)
    futures = {}
    models: dict[int, Any] = {}
    for (f, group), members in sorted(plan.items()):
        if f not in models:
            models[f] = client.scatter(model_for_fold(f), broadcast=False, hash=False)
        for gs, _ in gene_partitions(index, members, max_rows=max_rows):
            fut = client.submit(score_stats, dataset, gs, models[f], calibration_rows, pure=False,
                                priority=3)
            futures[fut] = (group, len(gs.genes))
    out: dict[int, ScoreStats] = {}
    samples: list[pd.DataFrame] = []
    t0, n = time.perf_counter(), len(futures)
    for i, fut in enumerate(watched(client, list(futures), "the full-body evaluation tasks"), 1):
        group, n_genes = futures.pop(fut)
        stats = fut.result()
        fut.release()
        if calibration_rows:
            stats, rows = stats
            samples.append(rows.assign(fold=group))
        out.setdefault(group, ScoreStats()).merge(stats)
        log.info("[%d/%d] full-body evaluation: %d genes, %s positions (elapsed %.0f s)", i, n, n_genes,
                 f"{int(stats.positions):,}", time.perf_counter() - t0)
    if calibration_rows:
        return out, pd.concat(samples, ignore_index=True)
    return out


# -- artifacts -------------------------------------------------------------------------------
FULL_BODY_DIR = "full_body_evaluation"


def write_full_body(out_dir: Any, by_fold: Mapping[int, ScoreStats], metrics: dict[str, Any], *,
                    skip_plots: bool = False) -> list[str]:
    """``metrics.json``, ``curves.csv`` and (unless ``skip_plots``) ``pr_roc_curves.{png,pdf}`` in ``out_dir``."""
    from pathlib import Path

    from metadask.io import write_csv, write_json

    out = Path(out_dir)
    write_json(out / "metrics.json", metrics)
    table = curves(by_fold)
    write_csv(out / "curves.csv", table)
    files = ["metrics.json", "curves.csv"]
    if not skip_plots:
        from metadask.analysis.plots import close, save_figure

        fig = full_body_figure(table, metrics)
        save_figure(fig, out / "pr_roc_curves")
        close(fig)
        files += ["pr_roc_curves.png", "pr_roc_curves.pdf"]
    return files


def full_body_figure(table: pd.DataFrame, metrics: dict[str, Any]) -> Any:
    """PR curves per task (top) and ROC (bottom, log FPR), base vs meta, thresholds marked."""
    from metadask.analysis.plots import new_figure

    fig = new_figure(12, 7)
    axes = fig.subplots(2, len(TASKS))
    for j, task in enumerate(TASKS):
        for model, style in (("base", "--"), ("meta", "-")):
            part = table[(table["model"] == model) & (table["task"] == task)].sort_values("threshold")
            key = "ap_" + task if task != "splice" else "best_f1"
            label = f"{model} ({'AP' if task != 'splice' else 'best F1'} {metrics[model].get(key, float('nan')):.3f})"
            axes[0, j].plot(part["recall"], part["precision"], style, label=label)
            axes[1, j].plot(part["fpr"].clip(lower=1e-7), part["recall"], style, label=model)
        axes[0, j].set(title=f"{task}: precision-recall, every position", xlabel="recall", ylabel="precision",
                       xlim=(0, 1), ylim=(0, 1.02))
        axes[0, j].legend(loc="lower left", fontsize=8)
        axes[1, j].set(title=f"{task}: ROC", xlabel="false positive rate (log)", ylabel="true positive rate", xscale="log",
                       xlim=(1e-6, 1), ylim=(0, 1.02))
    return fig


def full_body_section(metrics: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(metric, base, meta) rows for the summary and the report."""
    rows = []
    for key in ("positions", "genes", "ap_donor", "ap_acceptor", "f1_at_0.5", "f1_at_threshold", "threshold", "best_f1",
                "topk_donor", "topk_acceptor", "topk_gene_donor", "topk_gene_acceptor", "fp_per_10kb", "fp_per_10kb_at_0.5"):
        rows.append((key, metrics["base"].get(key), metrics["meta"].get(key)))
    return rows


def evaluate_training_run(result: Any, dataset: Dataset, index: Any, client: Any, *, source: str,
                          calibration_rows: int = 0) -> tuple[dict[int, ScoreStats], dict[str, Any]] | tuple[
                              dict[int, ScoreStats], dict[str, Any], pd.DataFrame]:
    """Score every position of ``dataset``: a training gene with its fold's model, others with the final model.

    A strategy without fold models (a third-party one) gets every gene scored by the final
    model; the metrics then say ``"in_sample_genes"`` for the training genes among them.
    """
    check_eval_dataset(dataset, result.model.features)
    folds = {str(g): int(f) for g, f in result.folds.items()} if len(result.fold_models) else {}

    def model_for(fold: int) -> MetaModel:
        return result.model if fold == UNSEEN else result.fold_model(fold)

    trained = {str(g) for g in result.folds.index}
    n_trained = sum(1 for g in index.genes if str(g) in trained)
    log.info("Full-body evaluation of %s: %d genes (%d in training folds, scored by their fold's model; %d unseen, "
             "scored by the final model)", dataset.url, index.n_genes, n_trained, index.n_genes - n_trained)
    scored = score_full_body(dataset, index, model_for, folds, client, pseudo_folds=not folds,
                             calibration_rows=calibration_rows)
    by_fold, sample = scored if calibration_rows else (scored, None)
    metrics = full_body_metrics(by_fold, source=source)
    if not folds and n_trained:
        log.warning("Strategy '%s' keeps no fold models: %d training genes were scored in sample.", result.strategy, n_trained)
        metrics["in_sample_genes"] = n_trained
    return (by_fold, metrics, sample) if calibration_rows else (by_fold, metrics)


def weighted_oof_stats(oof: OOFParts) -> dict[int, ScoreStats]:
    """Per fold, statistics of weighted out-of-fold rows (an estimate of the full bodies they were sampled from),
    computed where the parts are (a fold on a worker)."""
    columns = ["gene", "label", "weight", *BASE_SCORE_COLUMNS, *(f"prob_{c}" for c in LABELS)]
    return oof.map_folds(columns, _weighted_fold_stats, "the weighted out-of-fold statistics")


def _weighted_fold_stats(part: pd.DataFrame) -> ScoreStats:
    from metadask.analysis.metrics import base_proba, meta_proba

    return stats_of(part["label"].to_numpy(), base_proba(part), meta_proba(part), part["gene"].to_numpy(),
                    weights=part["weight"].to_numpy())
