"""``single``: one in-memory model, three one-vs-rest boosters, gene-aware k-fold CV.

Every (fold, class) fit and the three final fits are Dask futures that read their own rows
on the workers. A fold's out-of-fold predictions are a task that waits for that fold's three
boosters; each final fit waits for its class's CV fits, which size it (mean best iteration).
"""

from __future__ import annotations

import logging

import pandas as pd

from metadask.dataset.schema import LABELS
from metadask.models.boosted import BoosterModel, booster_from_bytes
from metadask.results import FoldModels, TrainingResult
from metadask.strategies.base import BOOSTING_OPTIONS, Strategy, TrainContext, fits_frame, fold_booster_model
from metadask.strategies.tasks import FitSpec, run_predict

log = logging.getLogger("metadask")


class SingleStrategy(Strategy):
    name = "single"
    label = "Single XGBoost Model"
    options = BOOSTING_OPTIONS

    def fit(self, ctx: TrainContext) -> TrainingResult:
        cfg = ctx.config
        params = cfg.xgb_params()
        specs: list[FitSpec] = []
        cv_items: dict[str, tuple[FitSpec, object]] = {}
        by_fold: dict[int, list[object]] = {}
        by_class: dict[int, list[object]] = {k: [] for k in range(len(LABELS))}
        for fp in ctx.fold_plans:
            for k, name in enumerate(LABELS):
                spec = FitSpec(
                    key=f"cv-f{fp.fold}-{name}", scope="cv", cls=k, fold=fp.fold,
                    fit=ctx.gene_set(fp.fit), valid=ctx.gene_set(fp.valid), eval_genes=fp.train_eval,
                    n_estimators=cfg.n_estimators, early_stopping_rounds=cfg.early_stopping_rounds, params=params,
                )
                item = ctx.submit_fit(spec, priority=10)
                specs.append(spec)
                cv_items[spec.key] = (spec, item)
                by_fold.setdefault(fp.fold, []).append(item)
                by_class[k].append(item)
        final_items: dict[str, tuple[FitSpec, object]] = {}
        all_genes = ctx.gene_set(ctx.index.genes)
        for k, name in enumerate(LABELS):
            spec = FitSpec(
                key=f"final-{name}", scope="final", cls=k, fit=all_genes, valid=None, eval_genes=(),
                n_estimators=cfg.n_estimators, early_stopping_rounds=0, params=params,
            )
            cv = by_class[k] if cfg.early_stopping_rounds > 0 else None
            final_items[spec.key] = (spec, ctx.submit_fit(spec, cv=cv, priority=0))
            specs.append(spec)
        oof_futures = [
            ctx.client.submit(
                run_predict, ctx.dataset, ctx.features, ctx.gene_set(fp.test), by_fold[fp.fold],
                key=f"metadask-oof-f{fp.fold}-{id(ctx)}", priority=5, retries=2,
            )
            for fp in ctx.fold_plans
        ]
        log.info("Submitted %d CV fits, %d final fits and %d out-of-fold prediction tasks",
                 len(cv_items), len(final_items), len(oof_futures))
        outputs = ctx.collect(cv_items, "CV fit")
        outputs.update(ctx.collect(final_items, "final fit"))
        parts = ctx.gather_logged(oof_futures, "out-of-fold predictions")
        oof = pd.concat([p.assign(fold=fp.fold) for p, fp in zip(parts, ctx.fold_plans)], ignore_index=True)
        model = BoosterModel([booster_from_bytes(outputs[f"final-{c}"].booster) for c in LABELS], ctx.features)
        model.info = {"strategy": self.name, "genes": ctx.index.n_genes, "rows": ctx.index.n_rows,
                      "trees": {c: outputs[f"final-{c}"].n_trees for c in LABELS}}
        return TrainingResult(
            strategy=self.name, reason="", model=model, oof=oof, fits=fits_frame(specs, outputs),
            histories={k: o.history for k, o in outputs.items() if o.history}, features=list(ctx.features),
            excluded=dict(ctx.excluded), folds=ctx.folds,
            fold_models=FoldModels(lambda f: fold_booster_model(outputs, f"cv-f{f}", ctx.features),
                                   [fp.fold for fp in ctx.fold_plans]),
        )
