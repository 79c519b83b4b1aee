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

    Items are ranked by size (ties broken by a seeded shuffle of the sorted ids) and taken in
    bands of ``n_groups``; within a band the items are shuffled with ``seed`` and dealt to the
    groups from the smallest running total up. Totals differ by at most about one item's size,
    and different seeds give different groups.
    """
    items = np.asarray(sorted(sizes.index), dtype=object)
    rng = np.random.default_rng(seed)
    items = items[rng.permutation(len(items))]
    s = sizes.loc[items].to_numpy()
    order = np.argsort(-s, kind="stable")
    totals = np.zeros(n_groups, dtype=np.int64)
    out = np.empty(len(items), dtype=np.int64)
    for start in range(0, len(order), n_groups):
        band = order[start : start + n_groups]
        band = band[rng.permutation(len(band))]
        targets = np.lexsort((np.arange(n_groups), totals))[: len(band)]
        for i, g in zip(band, targets):
            out[i] = g
            totals[g] += s[i]
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
#
# Peak memory of one fit task (a worker process reading a gene set and fitting one booster),
# calibrated by measurement with ``python -m benchmarks memory_model`` (docs/strategies.md):
#
#   peak = TASK_BASE_BYTES                                  worker process + libraries
#        + rows * (n_features * BYTES_PER_VALUE + BYTES_PER_ROW)
#                                                           float32 matrix, XGBoost's quantised
#                                                           matrix, validation / eval matrices,
#                                                           gradients, labels, id frame
#        + file_rows * n_features * READ_BYTES_PER_VALUE    parquet decoding of the largest
#                                                           file's share (arrow buffers, partly
#                                                           kept by arrow's allocator)
#        + n_features * BYTES_PER_FEATURE * max_bin / 256   quantile sketches, cuts, histograms

# Fitted (least squares on relative error, BYTES_PER_ROW held at 130) to 22 fit-task peaks: 9 measured
# on 2026-12-03 (42k-126k rows, 130-1,220 features, 10-150 genes per file, max_bin 64 / 256 / 1,024),
# the 11 of the 2026-11-25 calibration run (up to 343k rows, 1,300 features) and the 10,000-gene
# growth runs (6.8 M and 8.5 M rows), then scaled by 1.20 so that no point is measured more than
# 5 % over its estimate (target 10 %); median over-estimate 19 % (target 25 %). xgboost 3.2,
# pyarrow's default mimalloc pool. Recalibrate with ``python -m benchmarks memory_model --fit``.
TASK_BASE_BYTES = 445_000_000
"""A worker process with metadask, XGBoost, pandas and pyarrow loaded, plus the fixed share of a task (an idle worker: ~230-350 MiB)."""
BYTES_PER_VALUE = 8.1
"""Per feature value: float32 matrix (4) and, at scale, a second copy while per-file parts are joined; XGBoost's bins, eval copies."""
BYTES_PER_ROW = 156.0
"""Per row: labels, gradients, predictions, row partitions and the id / label frame."""
READ_BYTES_PER_VALUE = 14.1
"""Per feature value of the rows read from one file: arrow's decoded float64 columns and buffers."""
BYTES_PER_FEATURE = 130_000.0
"""Per feature, whatever the rows: quantile sketches and cuts, histogram buffers (at 256 bins; scales with max_bin)."""


def max_file_rows(index: GeneIndex) -> int:
    """Rows of the largest file (a gene spanning files counts fully in each: an upper bound)."""
    per_file: dict[int, int] = {}
    for files, n in zip(index.table["files"], index.table["n_rows"]):
        for f in files:
            per_file[f] = per_file.get(f, 0) + int(n)
    return max(per_file.values(), default=0)


def _fixed_bytes(n_features: int, max_bin: int) -> float:
    return TASK_BASE_BYTES + n_features * BYTES_PER_FEATURE * max_bin / 256


def task_peak_bytes(rows: int, n_features: int, *, file_rows: int | None = None, max_bin: int = 256) -> int:
    """Estimated peak memory of one fit task on ``rows`` rows (see docs/strategies.md).

    ``file_rows``: the most rows the task reads from one file (default: all of them, the
    worst case of a single file).
    """
    read = rows if file_rows is None else min(rows, file_rows)
    return int(_fixed_bytes(n_features, max_bin) + rows * (n_features * BYTES_PER_VALUE + BYTES_PER_ROW)
               + read * n_features * READ_BYTES_PER_VALUE)


def rows_within(budget: int, n_features: int, *, file_rows: int | None = None, max_bin: int = 256) -> int:
    """Most rows one fit task can take within ``budget`` bytes (inverse of :func:`task_peak_bytes`)."""
    fixed = _fixed_bytes(n_features, max_bin)
    per_row = n_features * BYTES_PER_VALUE + BYTES_PER_ROW
    rows = (budget - fixed) / (per_row + n_features * READ_BYTES_PER_VALUE)
    if file_rows is not None and rows > file_rows:
        rows = (budget - fixed - file_rows * n_features * READ_BYTES_PER_VALUE) / per_row
    return max(0, int(rows))


@dataclass(frozen=True)
class StrategyChoice:
    name: str
    reason: str
    task_budget: int
    peak_estimate: int
    genes_per_batch: int | None = None
    warning: str = ""
    """Set when a requested strategy's fits are expected to exceed the task budget."""
    task_estimate: int = 0
    """Estimated peak of the largest task the chosen strategy runs (``peak_estimate`` for ``single``, one batch's fit for ``batch-ensemble``)."""
    concurrent_fits: int | None = None
    """Fit tasks the smallest worker runs at once (``None``: not limited, for strategies without per-worker fit tasks)."""
    nthread: int | None = None
    """XGBoost threads per fit task on the smallest worker: its threads divided among its concurrent fits."""
    concurrency: str = ""
    """Why ``concurrent_fits`` is what it is (logged, recorded in the summary)."""


#: Strategies whose training tasks are independent fits (one worker each), limited by the plan's concurrency rule.
FIT_TASK_STRATEGIES = ("single", "batch-ensemble")


def concurrent_fits(task_peak: int, *, threads: int, budget: int, held: int = 0) -> int:
    """Fit tasks of ``task_peak`` bytes one worker can run at once within ``budget`` bytes (0..``threads``).

    The worker process (:data:`TASK_BASE_BYTES`, or what the worker holds now if more) is
    counted once; each concurrent task adds its peak beyond the process. A worker runs as many
    tasks at once as it has threads, so ``threads`` is the most it can be.
    """
    per_task = max(1, int(task_peak) - TASK_BASE_BYTES)
    room = int(budget) - max(int(held), TASK_BASE_BYTES)
    return max(0, min(int(threads), room // per_task))


def hard_limit(worker_memory: int, pause_fraction: float, held: int = 0) -> int:
    """The most one task may reach on a worker before Dask pauses it: ``pause_fraction`` of the limit, less held memory."""
    return int(worker_memory * pause_fraction) - max(0, int(held) - TASK_BASE_BYTES)


def plan_concurrency(name: str, task_estimate: int, *, threads: int, worker_memory: int, memory_fraction: float,
                     worker_held: int = 0, pause_fraction: float = 0.8) -> tuple[int | None, int | None, str]:
    """(concurrent fits, XGBoost nthread per fit, reason) on a worker, for strategy ``name``.

    A worker runs a task per thread; when that many fits of ``task_estimate`` bytes would not
    fit in ``memory_fraction`` of its memory limit (less what it holds already), fewer run at
    once and each gets the threads left over (``nthread = threads // concurrent``), so the
    CPU stays busy and the memory bounded. Raises :class:`~metadask.errors.TrainingError`
    when even one task would pass the worker's pause threshold.
    """
    from metadask.dataset.memory import format_bytes

    if name not in FIT_TASK_STRATEGIES:
        return None, None, ""
    threads = max(1, int(threads))
    budget = int(worker_memory * memory_fraction)
    n = concurrent_fits(task_estimate, threads=threads, budget=budget, held=worker_held)
    held_text = f", {format_bytes(worker_held)} held now" if worker_held > TASK_BASE_BYTES else ""
    if n == 0:
        hard = hard_limit(worker_memory, pause_fraction, worker_held)
        if task_estimate > hard:
            raise TrainingError(
                f"A worker is too small to hold one training task: a {name} fit needs ~{format_bytes(task_estimate)}, "
                f"more than the {format_bytes(hard)} the smallest worker's {format_bytes(worker_memory)} memory limit "
                f"allows before Dask pauses it ({pause_fraction:.0%}{held_text}). Give workers more memory "
                "(--memory-limit), lower --max-genes-per-batch with --strategy batch-ensemble, or add workers and use "
                "--strategy auto.")
        n = 1
        nthread = threads
        return n, nthread, (
            f"1 fit at a time per worker, with {nthread} XGBoost thread{'s' if nthread > 1 else ''}: one fit of "
            f"~{format_bytes(task_estimate)} is over the {format_bytes(budget)} ({memory_fraction:.0%}) task budget of "
            f"the smallest worker's {format_bytes(worker_memory)} memory limit{held_text}, but under its pause threshold")
    nthread = max(1, threads // n)
    if n < threads:
        reason = (f"{n} concurrent fit{'s' if n > 1 else ''} per worker instead of {threads} (one per thread): "
                  f"{threads} fits of ~{format_bytes(task_estimate)} would pass the {format_bytes(budget)} "
                  f"({memory_fraction:.0%}) of the smallest worker's {format_bytes(worker_memory)} memory limit"
                  f"{held_text}; each fit uses {nthread} XGBoost thread{'s' if nthread > 1 else ''}")
    else:
        reason = (f"{n} concurrent fit{'s' if n > 1 else ''} per worker (one per thread, ~{format_bytes(task_estimate)} "
                  f"each, within {format_bytes(budget)} of the {format_bytes(worker_memory)} memory limit); "
                  f"each fit uses {nthread} XGBoost thread{'s' if nthread > 1 else ''}")
    return n, nthread, reason


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
    max_bin: int = 256,
    threads_per_worker: int = 1,
    worker_held: int = 0,
    pause_fraction: float = 0.8,
) -> StrategyChoice:
    """Pick the strategy, and say why, from the memory a fit needs and a worker offers.

    The task budget is ``memory_fraction`` of the smallest worker's memory limit, less what
    that worker holds beyond an idle process (``worker_held``), capped by ``max_memory_gb``.
    ``auto`` chooses ``single`` when one fit on every row fits in that budget (by
    :func:`task_peak_bytes`), otherwise ``batch-ensemble`` with batches as large as the budget
    allows (at most ``max_genes_per_batch`` genes). ``train_all_genes`` forces the batch
    ensemble. ``genes_per_batch`` is set for every choice that trains batches. The choice also
    carries how many fits a worker of ``threads_per_worker`` threads runs at once and with how
    many XGBoost threads each (:func:`plan_concurrency`); a plan whose one task would pass the
    worker's pause threshold (``pause_fraction`` of its limit) raises :class:`TrainingError`.
    """
    from metadask.dataset.memory import format_bytes

    budget = int(worker_memory * memory_fraction) - max(0, int(worker_held) - TASK_BASE_BYTES)
    if max_memory_gb is not None:
        budget = min(budget, int(max_memory_gb * 2**30))
    hyper = {"max_bin": max_bin}
    file_rows = max_file_rows(index)
    peak = task_peak_bytes(index.n_rows, n_features, file_rows=file_rows, **hyper)
    mean_rows = max(1.0, index.n_rows / max(1, index.n_genes))
    biggest_gene = int(index.table["n_rows"].max()) if index.n_genes else 0
    # balanced packing can overshoot a batch's share by up to one gene: leave room for it
    fit_rows = rows_within(budget, n_features, file_rows=file_rows, **hyper) - biggest_gene
    by_memory = int(fit_rows // mean_rows)
    genes_per_batch = max(2, min(max_genes_per_batch, by_memory, index.n_genes))
    caps = {"memory": by_memory, "--max-genes-per-batch": max_genes_per_batch, "the number of genes": index.n_genes}
    limit = min(caps, key=lambda k: caps[k])
    # a batch's fit: its share of the rows plus up to one gene of packing overshoot
    batch_peak = task_peak_bytes(int(genes_per_batch * mean_rows) + biggest_gene, n_features, file_rows=file_rows, **hyper)
    batch_text = f"batches of {genes_per_batch} genes (capped by {limit}; ~{format_bytes(batch_peak)} per fit)"
    if by_memory < 2:
        batch_text += (f"; even 2-gene batches exceed the {format_bytes(budget)} task budget: give workers more memory "
                       "(--memory-limit) or raise --max-memory-gb")
    worker = {"threads": threads_per_worker, "worker_memory": worker_memory, "memory_fraction": memory_fraction,
              "worker_held": worker_held, "pause_fraction": pause_fraction}

    def chosen(name: str, reason: str, batches: int | None, warning: str = "") -> StrategyChoice:
        task = peak if name == "single" else batch_peak
        n, nthread, why = plan_concurrency(name, task, **worker)
        return StrategyChoice(name, reason, budget, peak, batches, warning, task, n, nthread, why)

    if train_all_genes:
        return chosen("batch-ensemble", f"forced by --train-all-genes; {batch_text}", genes_per_batch)
    if requested != "auto":
        warning = ""
        if requested == "single" and peak > budget:
            warning = (f"--strategy single: one fit on all {index.n_rows:,} rows x {n_features} features needs "
                       f"~{format_bytes(peak)}, more than the {format_bytes(budget)} task budget of the smallest "
                       "worker, so workers may pause or be restarted for memory; --strategy auto would train a batch "
                       f"ensemble ({batch_text})")
        return chosen(requested, f"requested with --strategy {requested}",
                      genes_per_batch if requested == "batch-ensemble" else None, warning)
    if peak <= budget:
        return chosen(
            "single",
            f"one fit on all {index.n_rows:,} rows x {n_features} features needs ~{format_bytes(peak)}, within the "
            f"{format_bytes(budget)} task budget of the smallest worker", None,
        )
    return chosen(
        "batch-ensemble",
        f"one fit on all {index.n_rows:,} rows x {n_features} features needs ~{format_bytes(peak)}, more than the "
        f"{format_bytes(budget)} task budget of the smallest worker; {batch_text}", genes_per_batch,
    )
