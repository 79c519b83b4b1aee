"""``single``: one in-memory model, three one-vs-rest boosters, gene-aware k-fold CV.

Every (fold, class) fit and the three final fits are Dask futures that read their own rows
on the workers. A fold's out-of-fold predictions are a task that waits for that fold's three
boosters; each final fit waits for its class's CV fits, which size it (mean best iteration).
When there are at least two such tasks per worker thread, a fold's three class fits (and the
three final fits) run as one task on one read and one quantised matrix
(:meth:`~metadask.strategies.base.TrainContext.submit_fits`). With ``--final-model cv-ensemble``
there is no final fit: the final model is the fold models' margins averaged.
"""

from __future__ import annotations

import logging

import numpy as np

from metadask.dataset.schema import LABELS
from metadask.models.boosted import BoosterModel, FitOutput, booster_from_bytes
from metadask.models.ensemble import EnsembleModel
from metadask.results import FoldModels, TrainingResult
from metadask.strategies.base import (
    BOOSTING_OPTIONS, FINAL_MODEL_OPTIONS, Strategy, TrainContext, fits_frame, fold_booster_model,
)
from metadask.strategies.batch_ensemble import SHARE_READS_PER_THREAD
from metadask.strategies.tasks import FitSpec, run_predict

log = logging.getLogger("metadask")


def final_model(outputs: dict[str, FitOutput], ctx: TrainContext) -> BoosterModel:
    """``--final-model refit``: the three final fits on every gene."""
    return BoosterModel([booster_from_bytes(outputs[f"final-{c}"].booster) for c in LABELS], ctx.features)


def cv_ensemble(outputs: dict[str, FitOutput], ctx: TrainContext) -> EnsembleModel:
    """``--final-model cv-ensemble``: the CV fold models, margins averaged with equal weights.

    No refit on every gene: each member saw (n_folds - 1) / n_folds of the genes; the average
    of their margins is the final model (the calibrators are fitted on their out-of-fold scores,
    as for a refit model).
    """
    members = [[booster_from_bytes(outputs[f"cv-f{fp.fold}-{c}"].booster) for c in LABELS] for fp in ctx.fold_plans]
    return EnsembleModel(members, np.ones((len(members), len(LABELS))), ctx.features, method="voting")


def model_trees(model: BoosterModel | EnsembleModel) -> dict[str, int]:
    """Trees per class of a final model (summed over ensemble members)."""
    groups = [model.boosters] if isinstance(model, BoosterModel) else model.members
    return {c: sum(int(g[k].num_boosted_rounds()) for g in groups) for k, c in enumerate(LABELS)}


class SingleStrategy(Strategy):
    name = "single"
    label = "Single XGBoost Model"
    supports_row_weights = True
    options = BOOSTING_OPTIONS | FINAL_MODEL_OPTIONS

    def fit(self, ctx: TrainContext) -> TrainingResult:
        cfg = ctx.config
        params = cfg.xgb_params()
        specs: list[FitSpec] = []
        cv_items: dict[str, tuple[FitSpec, object]] = {}
        by_fold: dict[int, list[object]] = {}
        by_class: dict[int, list[object]] = {k: [] for k in range(len(LABELS))}
        refit = cfg.final_model == "refit"
        # a fold's three class fits as one task (one read, one quantised matrix) when there are
        # enough such tasks to keep every worker thread busy; else one task per fit, for parallelism
        n_tasks = len(ctx.fold_plans) + (1 if refit else 0)
        share = n_tasks >= SHARE_READS_PER_THREAD * max(1, ctx.cluster.total_threads)
        for fp in ctx.fold_plans:
            fold_specs = [
                FitSpec(
                    key=f"cv-f{fp.fold}-{name}", scope="cv", cls=k, fold=fp.fold,
                    fit=ctx.gene_set(fp.fit), valid=ctx.gene_set(fp.valid), eval_genes=fp.train_eval,
                    n_estimators=cfg.n_estimators, early_stopping_rounds=cfg.early_stopping_rounds, params=params,
                    weight_power=ctx.tree_weight_power,
                )
                for k, name in enumerate(LABELS)
            ]
            items = ctx.submit_fits(fold_specs, priority=10) if share else \
                [ctx.submit_fit(spec, priority=10) for spec in fold_specs]
            for k, (spec, item) in enumerate(zip(fold_specs, items)):
                specs.append(spec)
                cv_items[spec.key] = (spec, item)
                by_fold.setdefault(fp.fold, []).append(item)
                by_class[k].append(item)
        final_items: dict[str, tuple[FitSpec, object]] = {}
        if refit:
            all_genes = ctx.gene_set(ctx.index.genes)
            final_specs = [
                FitSpec(
                    key=f"final-{name}", scope="final", cls=k, fit=all_genes, valid=None, eval_genes=(),
                    n_estimators=cfg.n_estimators, early_stopping_rounds=0, params=params,
                    weight_power=ctx.tree_weight_power,
                )
                for k, name in enumerate(LABELS)
            ]
            cv = [by_class[k] for k in range(len(LABELS))] if cfg.early_stopping_rounds > 0 else None
            items = ctx.submit_fits(final_specs, cv, priority=0) if share else \
                [ctx.submit_fit(spec, cv=None if cv is None else cv[k], priority=0) for k, spec in enumerate(final_specs)]
            for spec, item in zip(final_specs, items):
                final_items[spec.key] = (spec, item)
                specs.append(spec)
        oof_futures = [
            ctx.client.submit(
                run_predict, ctx.dataset, ctx.features, ctx.gene_set(fp.test), by_fold[fp.fold], cfg.device,
                key=f"metadask-oof-f{fp.fold}-{id(ctx)}", priority=5, retries=2, resources=ctx.resources,
            )
            for fp in ctx.fold_plans
        ]
        log.info("Submitted %d CV fits, %d final fits and %d out-of-fold prediction tasks",
                 len(cv_items), len(final_items), len(oof_futures))
        outputs = ctx.collect(cv_items, "CV fit")
        if final_items:
            outputs.update(ctx.collect(final_items, "final fit"))
        oof = ctx.oof_parts(oof_futures, [fp.fold for fp in ctx.fold_plans])
        model = final_model(outputs, ctx) if refit else cv_ensemble(outputs, ctx)
        model.info = {"strategy": self.name, "genes": ctx.index.n_genes, "rows": ctx.index.n_rows,
                      "final_model": cfg.final_model, "trees": model_trees(model)}
        return TrainingResult(
            strategy=self.name, reason="", model=model, oof_parts=oof, fits=fits_frame(specs, outputs),
            histories={k: o.history for k, o in outputs.items() if o.history}, features=list(ctx.features),
            excluded=dict(ctx.excluded), folds=ctx.folds,
            fold_models=FoldModels(lambda f: fold_booster_model(outputs, f"cv-f{f}", ctx.features),
                                   [fp.fold for fp in ctx.fold_plans]),
        )
