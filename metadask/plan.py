"""Planning: gene -> fold assignment, inner validation genes, batches of genes.

Every function here is a pure function of (sorted gene ids, their sizes, seed): the same seed
gives the same folds and batches whatever the cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from metadask.dataset.index import GeneIndex
from metadask.dataset.schema import LABELS
from metadask.errors import ConfigError, TrainingError, preview


def balanced_groups(sizes: pd.Series, n_groups: int, seed: int) -> pd.Series:
    """Assign each item (index of ``sizes``) to one of ``n_groups`` groups, balancing total size.

    Items are shuffled with ``seed`` (from sorted order), then placed largest first into the
    group with the smallest total so far (ties: lowest group id).
    """
    items = np.asarray(sorted(sizes.index), dtype=object)
    rng = np.random.default_rng(seed)
    items = items[rng.permutation(len(items))]
    s = sizes.loc[items].to_numpy()
    order = np.argsort(-s, kind="stable")
    totals = np.zeros(n_groups, dtype=np.int64)
    counts = np.zeros(n_groups, dtype=np.int64)
    out = np.empty(len(items), dtype=np.int64)
    for i in order:
        g = int(np.lexsort((np.arange(n_groups), counts, totals))[0])
        out[i] = g
        totals[g] += s[i]
        counts[g] += 1
    return pd.Series(out, index=items).sort_index()


def assign_folds(index: GeneIndex, n_folds: int, seed: int) -> pd.Series:
    """gene -> fold (0..n_folds-1), balanced by row count. Never a gene in two folds."""
    if index.n_genes < n_folds:
        raise ConfigError(
            f"The 'n_folds' option must be at most the number of genes (found {n_folds} folds for "
            f"{index.n_genes} genes). Lower --n-folds or add genes."
        )
    return balanced_groups(index.table["n_rows"], n_folds, seed).rename("fold")


def check_classes(index: GeneIndex, genes: Sequence[str], what: str) -> None:
    """Raise if some class has no row among ``genes``."""
    counts = index.label_counts(genes)
    absent = [c for c, n in counts.items() if n == 0]
    if absent:
        raise TrainingError(
            f"Class {preview(absent)} has no rows in {what} ({len(genes)} genes). Every class needs examples "
            "there: add genes with such sites, or use fewer folds (--n-folds)."
        )


def split_validation(index: GeneIndex, genes: Sequence[str], valid_size: float, seed: int) -> tuple[list[str], list[str]]:
    """Split ``genes`` into (fit genes, validation genes) by gene, seeded.

    About ``valid_size`` of the rows go to validation; the validation set holds at least one
    gene with each splice-site class when ``genes`` does.
    """
    genes = sorted(genes)
    rng = np.random.default_rng([seed, len(genes)])
    perm = [genes[i] for i in rng.permutation(len(genes))]
    rows = index.table.loc[perm, "n_rows"].to_numpy()
    target = valid_size * rows.sum()
    cum = np.cumsum(rows)
    k = int(np.searchsorted(cum, target)) + 1
    k = max(1, min(k, len(perm) - 1))
    valid = set(perm[:k])
    for cls in LABELS[1:]:
        col = f"n_{cls}"
        if index.table.loc[sorted(valid), col].sum() == 0:
            candidates = [g for g in perm[k:] if index.table.at[g, col] > 0]
            if candidates and len(perm) - len(valid) > 1:
                valid.add(candidates[0])
    fit = [g for g in genes if g not in valid]
    return fit, sorted(valid)


def eval_sample(genes: Sequence[str], n: int, seed: int) -> list[str]:
    """A seeded sample of ``n`` genes (held-in evaluation rows for the training-loss curve)."""
    genes = sorted(genes)
    if n >= len(genes):
        return genes
    rng = np.random.default_rng([seed, 7, len(genes)])
    return sorted(genes[i] for i in rng.choice(len(genes), size=n, replace=False))


@dataclass(frozen=True)
class FoldPlan:
    """The genes of one CV fold."""

    fold: int
    test: tuple[str, ...]
    fit: tuple[str, ...]
    valid: tuple[str, ...]
    train_eval: tuple[str, ...]


def plan_folds(index: GeneIndex, folds: pd.Series, *, valid_size: float, seed: int) -> list[FoldPlan]:
    """Per fold: held-out test genes, fit genes, validation genes and a held-in eval sample."""
    plans = []
    for f in range(int(folds.max()) + 1):
        test = sorted(folds.index[folds == f])
        train = sorted(folds.index[folds != f])
        check_classes(index, test, f"CV fold {f} (its held-out genes)")
        check_classes(index, train, f"the training genes of CV fold {f}")
        fit, valid = split_validation(index, train, valid_size, seed + 1000 * (f + 1))
        train_eval = eval_sample(fit, max(1, len(valid)), seed + f)
        plans.append(FoldPlan(f, tuple(test), tuple(fit), tuple(valid), tuple(train_eval)))
    return plans


# -- memory model and strategy choice ----------------------------------------------------

BYTES_PER_VALUE = 4 + 1
"""float32 matrix + XGBoost's quantised (uint8 bin) copy, per feature value."""
BYTES_PER_ROW = 96
"""Gradients, labels, predictions and row partitions per row, across a fit."""
TASK_BASE_BYTES = 150 * 2**20
"""Libraries and interpreter of a worker running a fit."""


def task_peak_bytes(rows: int, n_features: int) -> int:
    """Estimated peak memory of one fit task on ``rows`` rows (see docs/strategies.md)."""
    return int(rows * (n_features * BYTES_PER_VALUE + BYTES_PER_ROW) + TASK_BASE_BYTES)


def rows_within(budget: int, n_features: int) -> int:
    """Most rows one fit task can take within ``budget`` bytes."""
    return max(0, int((budget - TASK_BASE_BYTES) // (n_features * BYTES_PER_VALUE + BYTES_PER_ROW)))


@dataclass(frozen=True)
class StrategyChoice:
    name: str
    reason: str
    task_budget: int
    peak_estimate: int
    genes_per_batch: int | None = None


def choose_strategy(
    requested: str,
    *,
    index: GeneIndex,
    n_features: int,
    worker_memory: int,
    memory_fraction: float,
    max_memory_gb: float | None = None,
    max_genes_per_batch: int = 1200,
    train_all_genes: bool = False,
) -> StrategyChoice:
    """Pick the strategy, and say why, from the memory a fit needs and a worker offers.

    ``auto`` chooses ``single`` when one fit on every row fits in ``memory_fraction`` of the
    smallest worker (capped by ``max_memory_gb``), otherwise ``batch-ensemble`` with batches
    as large as that budget allows (at most ``max_genes_per_batch`` genes).
    """
    from metadask.dataset.memory import format_bytes

    budget = int(worker_memory * memory_fraction)
    if max_memory_gb is not None:
        budget = min(budget, int(max_memory_gb * 2**30))
    peak = task_peak_bytes(index.n_rows, n_features)
    mean_rows = max(1.0, index.n_rows / max(1, index.n_genes))
    by_memory = max(2, int(rows_within(budget, n_features) // mean_rows))
    genes_per_batch = max(2, min(max_genes_per_batch, by_memory, index.n_genes))
    if train_all_genes:
        return StrategyChoice("batch-ensemble", f"forced by --train-all-genes; {genes_per_batch} genes/batch", budget, peak, genes_per_batch)
    if requested != "auto":
        return StrategyChoice(requested, f"requested with --strategy {requested}", budget, peak,
                              genes_per_batch if requested == "batch-ensemble" else None)
    if peak <= budget:
        return StrategyChoice(
            "single",
            f"one fit on all {index.n_rows:,} rows needs ~{format_bytes(peak)}, within the {format_bytes(budget)} "
            f"task budget of the smallest worker",
            budget, peak,
        )
    return StrategyChoice(
        "batch-ensemble",
        f"one fit on all {index.n_rows:,} rows needs ~{format_bytes(peak)}, more than the {format_bytes(budget)} "
        f"task budget of the smallest worker; batches of {genes_per_batch} genes fit",
        budget, peak, genes_per_batch,
    )
