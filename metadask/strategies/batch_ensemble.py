"""``batch-ensemble``: one member (three one-vs-rest boosters) per batch of genes.

Genes are packed into batches deterministically (seeded, balanced by rows, capped at the
planned genes per batch; a gene is never in two batches). Each (batch, class) fit is a Dask
future that reads only its batch's genes on the worker and stops early on validation genes
held out inside the batch, so one task's memory is bounded by one batch (see the memory
model in :mod:`metadask.plan`). With at least two batches per worker thread, a batch's three
class fits run as one task that reads and quantises the batch once (same trees). Members
are combined by weighted soft voting of margins (:class:`~metadask.models.ensemble.EnsembleModel`).

Honest ensemble CV (``--ensemble-cv``):

``leave-batch-out`` (default)
    A gene's out-of-fold margin is the weighted vote of the members that did **not** train on
    it (every member but its own batch's, weights renormalised). The CV folds are the batches.
    No extra fits: the final members are the CV members.
``full``
    Full k-fold retraining: per CV fold, the training genes are packed into batches, an
    ensemble is trained on them and predicts the held-out genes. Then the final ensemble is
    trained on all genes. With a single batch leave-batch-out is impossible and ``full`` is used.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from metadask.config import setting
from metadask.dataset.index import GeneIndex
from metadask.dataset.schema import LABELS
from metadask.dataset.source import Dataset
from metadask.errors import TrainingError, preview
from metadask.models.base import sigmoid
from metadask.models.boosted import FitOutput, booster_from_bytes
from metadask.models.calibration import combine
from metadask.models.ensemble import EnsembleModel, fit_weights, member_margins
from metadask.models.metrics import PROB_COLUMNS, binary_metrics, classification_metrics
from metadask.models.threads import fit_threads
from metadask.plan import eval_sample, split_validation
from metadask.results import FoldModels, TrainingResult
from metadask.strategies.base import BOOSTING_OPTIONS, ENSEMBLE_OPTIONS, FINAL_MODEL_OPTIONS, Strategy, TrainContext, fits_frame
from metadask.strategies.tasks import FitSpec, GeneSet, margins_frame, read_rows

log = logging.getLogger("metadask")

_BATCH_SEED = 7919
"""Offset mixed into the seed for batch packing (folds use the plain seed)."""
SHARE_READS_PER_THREAD = 2
"""Batches per worker thread from which a batch's three class fits run as one task (one read)."""


def cv_members(setting_value: object = None) -> int:
    """Most members that score a gene in leave-batch-out CV (0: every member but its own).

    From ``metadask.ensemble-cv-members`` (default in metadask.yaml) unless ``setting_value`` is given.
    """
    value = setting("ensemble-cv-members") if setting_value is None else setting_value
    try:
        n = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        n = -1
    if n < 0:
        from metadask.errors import option_error

        raise option_error("ensemble-cv-members", "must be an integer >= 0 (0: every other member)", value,
                           "Use e.g. --set ensemble-cv-members=10.")
    return n


def scoring_members(batch: int, n_batches: int, limit: int, seed: int) -> list[int]:
    """The members that score batch ``batch``'s genes: never its own; a seeded choice of ``limit``."""
    others = [j for j in range(n_batches) if j != batch]
    if limit <= 0 or len(others) <= limit:
        return others
    rng = np.random.default_rng([seed, _BATCH_SEED, batch])
    return sorted(int(j) for j in rng.choice(others, size=limit, replace=False))


def pack_batches(sizes: pd.Series, genes_per_batch: int, seed: int) -> pd.Series:
    """gene -> batch id: ``ceil(n / genes_per_batch)`` batches, balanced by rows, seeded.

    Genes are shuffled with ``seed`` (from sorted order), then placed largest first into the
    batch with the fewest rows so far among those still below ``genes_per_batch`` genes (ties:
    fewest genes, then lowest id). The result depends only on (sorted genes, sizes, seed).
    """
    if genes_per_batch < 1:
        raise ValueError("genes_per_batch must be >= 1")
    items = np.asarray(sorted(sizes.index), dtype=object)
    n_batches = max(1, math.ceil(len(items) / genes_per_batch))
    rng = np.random.default_rng([seed, _BATCH_SEED])
    items = items[rng.permutation(len(items))]
    s = sizes.loc[items].to_numpy(dtype=np.int64)
    order = np.argsort(-s, kind="stable")
    totals = np.zeros(n_batches, dtype=np.int64)
    counts = np.zeros(n_batches, dtype=np.int64)
    ids = np.arange(n_batches)
    out = np.empty(len(items), dtype=np.int64)
    for i in order:
        open_ = counts < genes_per_batch
        cand = ids[open_]
        g = int(cand[np.lexsort((cand, counts[open_], totals[open_]))[0]])
        out[i] = g
        totals[g] += s[i]
        counts[g] += 1
    return pd.Series(out, index=items, name="batch").sort_index()


def _check_batch(index: GeneIndex, genes: Sequence[str], what: str) -> None:
    counts = index.label_counts(genes)
    absent = [c for c, n in counts.items() if n == 0]
    if len(genes) < 2 or absent:
        problem = f"has only {len(genes)} gene" if len(genes) < 2 else f"has no {preview(absent)} rows"
        raise TrainingError(
            f"{what} {problem}: every batch needs two genes or more and examples of every class. "
            "Raise --max-genes-per-batch (or --max-memory-gb), or add genes with splice sites."
        )


def run_ensemble_predict(
    dataset: Dataset, features: Sequence[str], gs: GeneSet, fits: Sequence[Sequence[FitOutput]], method: str,
    device: str | None = None,
) -> pd.DataFrame:
    """Weighted margins of the member fits ``fits[member][class]`` for a gene set's rows.

    Runs on a worker; the weights come from the fits themselves (see
    :func:`~metadask.models.ensemble.fit_weights`), renormalised over the members given.
    """
    import xgboost as xgb

    x, y, meta = read_rows(dataset, gs, features)  # the rows are read once, for every member that scores them
    weights = fit_weights(fits, method)
    margins = np.zeros((len(x), len(LABELS)), dtype=np.float64)
    # nthread through XGBoost's (thread-local) global config, not set on the boosters: they are shared
    # between the tasks of this worker (cached_boosters), and prediction is thread-safe when nothing is set
    with xgb.config_context(nthread=fit_threads()):
        for j, member in enumerate(fits):
            margins += member_margins([cached_boosters(member, device)], x)[0] * weights[j]
    return margins_frame(meta, y, margins, dataset.gene_column, dataset.weight_column)


BOOSTER_CACHE_BYTES = 256 * 2**20
"""Serialized size of the member boosters a worker process keeps loaded for leave-batch-out scoring."""
_booster_cache: OrderedDict[tuple[bytes, str | None], tuple[int, Any]] = OrderedDict()
_booster_cache_lock = threading.Lock()


def cached_boosters(member: Sequence[FitOutput], device: str | None = None) -> list[Any]:
    """A member's boosters, loaded once per worker process (LRU, up to :data:`BOOSTER_CACHE_BYTES` serialized).

    Each member scores the genes of up to ``ensemble-cv-members`` other batches, one task per
    batch: without the cache, every task loaded every member's boosters again (about a third
    of the scoring time at 100 trees). Keyed by a digest of the booster bytes, so a
    long-lived worker never confuses runs.
    """
    import hashlib

    out = []
    for f in member:
        key = (hashlib.blake2b(f.booster, digest_size=16).digest(), device)
        with _booster_cache_lock:
            hit = _booster_cache.get(key)
            if hit is not None:
                _booster_cache.move_to_end(key)
        if hit is None:
            booster = booster_from_bytes(f.booster)
            if device:
                booster.set_param({"device": device})
            hit = (len(f.booster), booster)
            with _booster_cache_lock:
                _booster_cache[key] = hit
                total = sum(n for n, _ in _booster_cache.values())
                while total > BOOSTER_CACHE_BYTES and len(_booster_cache) > 1:
                    total -= _booster_cache.popitem(last=False)[1][0]
        out.append(hit[1])
    return out


def _chunks(index: GeneIndex, genes: Sequence[str], genes_per_task: int, seed: int) -> list[list[str]]:
    """Split ``genes`` into prediction tasks of at most ``genes_per_task`` genes."""
    if len(genes) <= genes_per_task:
        return [sorted(genes)]
    groups = pack_batches(index.table.loc[sorted(genes), "n_rows"], genes_per_task, seed)
    return [sorted(groups.index[groups == g]) for g in range(int(groups.max()) + 1)]


def fold_figures(part: pd.DataFrame) -> dict[str, Any]:
    """One fold's figures of :func:`ensemble_cv_results` (runs on a worker when there is a client)."""
    if all(c in part for c in PROB_COLUMNS):
        proba = part[list(PROB_COLUMNS)].to_numpy(dtype=np.float64)
    else:
        proba = combine(sigmoid(part[[f"margin_{c}" for c in LABELS]].to_numpy()))
    y = part["label"].to_numpy()
    base = part[["neither_score", "donor_score", "acceptor_score"]].to_numpy(dtype=np.float64)
    cls = classification_metrics(y, proba)
    return {"n_genes": int(part["gene"].nunique()), "n_rows": int(len(part)), "accuracy": cls["accuracy"],
            "macro_f1": cls["macro_f1"], "meta_binary_f1": binary_metrics(y, proba)["f1"],
            "base_binary_f1": binary_metrics(y, base)["f1"]}


def ensemble_cv_results(result: TrainingResult) -> pd.DataFrame:
    """Per-fold figures of the ensemble's honest CV (``ensemble_cv_results.csv``).

    Uses the calibrated ``prob_*`` columns of the out-of-fold predictions when present (after
    :func:`metadask.training.calibrate`), otherwise the uncalibrated combined sigmoids. A fold
    at a time, only the columns it reads, where the parts are (each fold scored on a worker).
    """
    oof = result.oof_parts
    calibrated = all(c in oof for c in PROB_COLUMNS)
    columns = ["gene", "label", "neither_score", "donor_score", "acceptor_score",
               *(PROB_COLUMNS if calibrated else [f"margin_{c}" for c in LABELS])]
    folds = {int(r["fold"]): r for r in result.details.get("ensemble_cv", [])}
    figures = oof.map_folds(columns, fold_figures, "the ensemble CV figures")
    rows_out = []
    for fold, fig in figures.items():
        info = folds.get(fold, {})
        rows_out.append({
            "fold": fold, "mode": result.details.get("ensemble_cv_mode"), "n_genes": fig["n_genes"],
            "n_rows": fig["n_rows"], "members_used": info.get("members_used"), "scored_by": info.get("scored_by"),
            "accuracy": fig["accuracy"], "macro_f1": fig["macro_f1"],
            "meta_binary_f1": fig["meta_binary_f1"], "base_binary_f1": fig["base_binary_f1"],
            "probabilities": "calibrated" if calibrated else "uncalibrated",
        })
    return pd.DataFrame(rows_out)


class BatchEnsembleStrategy(Strategy):
    """Weighted soft-voting ensemble of per-batch one-vs-rest boosters (see module docs)."""

    name = "batch-ensemble"
    label = "Batch Ensemble"
    supports_row_weights = True
    options = BOOSTING_OPTIONS | ENSEMBLE_OPTIONS | FINAL_MODEL_OPTIONS
    settings = ("ensemble-cv-members",)

    # -- planning --------------------------------------------------------------------------
    def genes_per_batch(self, ctx: TrainContext) -> int:
        """Planned genes per batch: the memory plan's figure capped by --max-genes-per-batch."""
        choice = ctx.plan.get("choice")
        planned = getattr(choice, "genes_per_batch", None) or self.config.max_genes_per_batch
        return int(max(2, min(planned, self.config.max_genes_per_batch, ctx.index.n_genes)))

    def batches(self, ctx: TrainContext, genes: Sequence[str] | None = None, seed: int | None = None) -> pd.Series:
        """gene -> batch for ``genes`` (all genes by default)."""
        genes = ctx.index.genes if genes is None else sorted(genes)
        return pack_batches(ctx.index.table.loc[genes, "n_rows"], self.genes_per_batch(ctx),
                            self.config.seed if seed is None else seed)

    def describe(self, ctx: TrainContext) -> str:
        return f"{self.label} ({self.genes_per_batch(ctx)} genes/batch)"

    # -- fitting ---------------------------------------------------------------------------
    def _submit_members(
        self, ctx: TrainContext, batches: pd.Series, prefix: str, scope: str, fold: int | None, seed: int,
        specs: list[FitSpec], items: dict[str, tuple[FitSpec, Any]], priority: int, share_reads: bool,
    ) -> list[list[Any]]:
        """Submit the three fits of every batch (one task each with ``share_reads``); ``futures[batch][class]``."""
        cfg = ctx.config
        params = cfg.xgb_params()
        out = []
        for b in range(int(batches.max()) + 1):
            genes = sorted(batches.index[batches == b])
            _check_batch(ctx.index, genes, f"Batch {b}" + ("" if fold is None else f" of CV fold {fold}"))
            fit, valid = split_validation(ctx.index, genes, cfg.valid_size, seed + 1000 * (b + 1))
            train_eval = eval_sample(fit, max(1, len(valid)), seed + b)
            fit_set, valid_set = ctx.gene_set(fit), ctx.gene_set(valid)
            batch_specs = [
                FitSpec(
                    key=f"{prefix}b{b}-{name}", scope=scope, cls=k, fold=fold, batch=b,
                    fit=fit_set, valid=valid_set, eval_genes=tuple(train_eval),
                    n_estimators=cfg.n_estimators, early_stopping_rounds=cfg.early_stopping_rounds, params=params,
                    weight_power=ctx.tree_weight_power,
                )
                for k, name in enumerate(LABELS)
            ]
            if share_reads:
                group = ctx.submit_fits(batch_specs, priority=priority)
            else:
                group = [ctx.submit_fit(spec, priority=priority) for spec in batch_specs]
            for spec, item in zip(batch_specs, group):
                specs.append(spec)
                items[spec.key] = (spec, item)
            out.append(group)
        return out

    def _predict(self, ctx: TrainContext, genes: Sequence[str], fits: list[list[Any]], tag: str, seed: int) -> list[Any]:
        from dask.base import tokenize

        futures = []
        for i, chunk in enumerate(_chunks(ctx.index, genes, self.genes_per_batch(ctx), seed)):
            gs = ctx.gene_set(chunk)
            futures.append(ctx.client.submit(
                run_ensemble_predict, ctx.dataset, ctx.features, gs, fits, self.config.ensemble_method, self.config.device,
                key=f"metadask-oof-{tag}-{i}-{tokenize(gs.genes, tag, id(ctx))}", priority=5, retries=2,
                resources=ctx.resources,
            ))
        return futures

    def fit(self, ctx: TrainContext) -> TrainingResult:
        cfg = ctx.config
        batches = self.batches(ctx)
        n_batches = int(batches.max()) + 1
        mode = cfg.ensemble_cv
        note = ""
        if mode == "leave-batch-out" and n_batches < 2:
            mode = "full"
            note = ("Only one batch: leave-batch-out CV is impossible, so the ensemble was cross-validated by full "
                    f"{cfg.n_folds}-fold retraining instead.")
            log.info(note)
        # One task per batch (reading it once for its three classes) when there are enough
        # batches to keep every worker thread busy; otherwise one task per class, for parallelism.
        # --final-model cv-ensemble with full CV: the CV members are the final model (no member refit)
        cv_final = mode == "full" and cfg.final_model == "cv-ensemble"
        n_tasks = n_batches * (1 if mode == "leave-batch-out" else cfg.n_folds + (0 if cv_final else 1))
        share_reads = n_tasks >= SHARE_READS_PER_THREAD * max(1, ctx.cluster.total_threads)
        log.info("Batch ensemble: %s", f"one task per batch for its three classes ({n_tasks} batches to fit, "
                 f"{ctx.cluster.total_threads} worker threads): each batch is read once" if share_reads else
                 f"one task per (batch, class) fit: {n_tasks} batches are too few to keep "
                 f"{ctx.cluster.total_threads} worker threads busy otherwise")
        specs: list[FitSpec] = []
        member_items: dict[str, tuple[FitSpec, Any]] = {}
        members = [] if cv_final else self._submit_members(ctx, batches, "member-", "member", None, cfg.seed, specs,
                                                           member_items, 10, share_reads)
        cv_items: dict[str, tuple[FitSpec, Any]] = {}
        oof_parts: list[tuple[int, Any]] = []
        cv_info: list[dict[str, Any]] = []
        fold_prefixes: dict[int, list[str]] = {}  # fold -> key prefixes of the members that scored it
        limit = cv_members()
        if mode == "leave-batch-out":
            if 0 < limit < n_batches - 1:
                note = (f"Leave-batch-out CV: each gene is scored by {limit} of the {n_batches - 1} members that never "
                        "saw it (a seeded choice; metadask.ensemble-cv-members), so the cost stays linear in the data.")
            for b in range(n_batches):
                others = scoring_members(b, n_batches, limit, cfg.seed)
                fold_prefixes[b] = [f"member-b{j}" for j in others]
                genes = sorted(batches.index[batches == b])
                oof_parts += [(b, f) for f in self._predict(ctx, genes, [members[j] for j in others], f"b{b}", cfg.seed + b)]
                cv_info.append({"fold": b, "members_used": len(others), "scored_by": " ".join(f"member{j}" for j in others),
                                "n_genes": len(genes)})
            folds = batches.rename("fold")
        else:
            for fp in ctx.fold_plans:
                train_genes = sorted(set(fp.fit) | set(fp.valid))
                seed = cfg.seed + 100_003 * (fp.fold + 1)
                fold_batches = self.batches(ctx, train_genes, seed)
                fold_members = self._submit_members(ctx, fold_batches, f"cv-f{fp.fold}-", "cv-member", fp.fold, seed,
                                                    specs, cv_items, 20, share_reads)
                oof_parts += [(fp.fold, f) for f in self._predict(ctx, fp.test, fold_members, f"f{fp.fold}", seed)]
                k = int(fold_batches.max()) + 1
                fold_prefixes[fp.fold] = [f"cv-f{fp.fold}-b{j}" for j in range(k)]
                cv_info.append({"fold": fp.fold, "members_used": k, "scored_by": f"{k} members trained on the other folds",
                                "n_genes": len(fp.test)})
            folds = ctx.folds
        log.info("Batch ensemble: %d batches of <= %d genes, %d member fits, %d CV fits, %d prediction tasks (%s CV)",
                 n_batches, self.genes_per_batch(ctx), len(member_items), len(cv_items), len(oof_parts), mode)
        outputs = ctx.collect(cv_items, "CV member fit") if cv_items else {}
        if member_items:
            outputs.update(ctx.collect(member_items, "member fit"))
        oof = ctx.oof_parts([f for _, f in oof_parts], [fold for fold, _ in oof_parts])

        if cv_final:
            prefixes = [p for fp in ctx.fold_plans for p in fold_prefixes[fp.fold]]
            member_info = [{"member": i, "cv_member": p, "trees": {c: outputs[f"{p}-{c}"].n_trees for c in LABELS}}
                           for i, p in enumerate(prefixes)]
        else:
            prefixes = [f"member-b{b}" for b in range(n_batches)]
            member_info = [
                {"member": b, "genes": int((batches == b).sum()), "rows": int(ctx.index.rows(batches.index[batches == b])),
                 "trees": {c: outputs[f"member-b{b}-{c}"].n_trees for c in LABELS}}
                for b in range(n_batches)
            ]
        member_fits = [[outputs[f"{p}-{c}"] for c in LABELS] for p in prefixes]
        weights = fit_weights(member_fits, cfg.ensemble_method)
        model = EnsembleModel([[booster_from_bytes(f.booster) for f in m] for m in member_fits], weights, ctx.features,
                              method=cfg.ensemble_method)
        model.info = {"strategy": self.name, "genes": ctx.index.n_genes, "rows": ctx.index.n_rows,
                      "members": member_info, "method": cfg.ensemble_method, "ensemble_cv": mode,
                      "final_model": "cv-ensemble" if cv_final else "batch members"}
        details: dict[str, Any] = {
            "n_batches": n_batches, "genes_per_batch": self.genes_per_batch(ctx), "ensemble_method": cfg.ensemble_method,
            "ensemble_cv_mode": mode, "ensemble_cv": cv_info,
            "ensemble_cv_members": max(len(i["scored_by"].split()) for i in cv_info) if mode == "leave-batch-out" else None,
            "batches": {str(b): sorted(batches.index[batches == b]) for b in range(n_batches)},
            "member_weights": {LABELS[k]: [round(float(w), 6) for w in weights[:, k]] for k in range(len(LABELS))},
        }
        if note:
            details["ensemble_cv_note"] = note
        def fold_model(fold: int) -> EnsembleModel:
            fits = [[outputs[f"{p}-{c}"] for c in LABELS] for p in fold_prefixes[fold]]
            return EnsembleModel([[booster_from_bytes(f.booster) for f in m] for m in fits],
                                 fit_weights(fits, cfg.ensemble_method), ctx.features, method=cfg.ensemble_method)

        result = TrainingResult(
            strategy=self.name, reason="", model=model, oof_parts=oof, fits=fits_frame(specs, outputs),
            histories={k: o.history for k, o in outputs.items() if o.history}, features=list(ctx.features),
            excluded=dict(ctx.excluded), folds=folds, details=details,
            fold_models=FoldModels(fold_model, fold_prefixes),
        )
        result.details["ensemble_cv_results"] = ensemble_cv_results(result)
        return result
