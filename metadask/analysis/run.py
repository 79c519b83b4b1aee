"""``run_analysis``: the unified post-training analysis, identical for every strategy.

It reads only the :class:`~metadask.results.TrainingResult` (out-of-fold predictions, fold
metrics, fit histories, the final model through the :class:`~metadask.models.base.MetaModel`
interface) and the context's dataset / gene index / client, never strategy internals.
Steps (one log line each, with its time):

1. evaluation: ``meta_evaluation_summary.json``, ``base_vs_meta_performance.tsv``, ``ensemble_cv_results.csv``
2. sample: the SHAP / permutation sample's tasks are submitted (they run on the workers while
   the client renders steps 3 and 4)
3. performance plots: ``performance_plots/``
4. overfitting: ``overfitting_analysis/``
5. SHAP: gathered from the workers, ``shap_analysis/``
6. feature importance (gain / SHAP / permutation on the workers): ``feature_importance_analysis/``
7. ``report.html``

``--skip-plots`` writes no PNG / PDF (CSV / JSON still are); ``--skip-shap`` writes no
``shap_analysis/``; each leaves a note in the summary. A step that fails is logged with its
traceback and noted; the others still run.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metadask.dataset.schema import LABELS
from metadask.results import TrainingResult

log = logging.getLogger("metadask")

PERFORMANCE_PLOTS = ("roc_curves_meta", "pr_curves_meta", "calibration_curves", "confusion_matrices", "gene_f1_base_vs_meta")
ROWS_PER_PARTITION = 250
"""The SHAP sample is split into about this many rows per worker task (at most 2 tasks per thread)."""


def expected_files(*, skip_shap: bool = False, skip_plots: bool = False) -> set[str]:
    """Relative paths of every file the analysis writes under the given flags (for tests / checks)."""
    files = {"meta_evaluation_summary.json", "base_vs_meta_performance.tsv", "ensemble_cv_results.csv", "report.html",
             "feature_importance_analysis/feature_importance_combined.csv",
             "overfitting_analysis/overfitting_summary.json", "overfitting_analysis/loss_curves.csv"}
    if not skip_plots:
        files |= {f"performance_plots/{p}.{ext}" for p in PERFORMANCE_PLOTS for ext in ("pdf", "png")}
        files |= {"feature_importance_analysis/feature_importance_comparison.png", "overfitting_analysis/loss_curves.png"}
    if not skip_shap:
        files |= {"shap_analysis/shap_importance_by_class.csv", "shap_analysis/shap_summary.json"}
        if not skip_plots:
            files |= {f"shap_analysis/shap_{kind}_{c}.png" for kind in ("bar", "beeswarm") for c in LABELS}
    return files


class _Steps:
    """Runs analysis steps: times and logs each, turns a failure into a note."""

    def __init__(self, result: TrainingResult, notes: list[str]):
        self.result, self.notes = result, notes
        self.t0 = time.perf_counter()

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - one failed step must not lose the others
            log.exception("Analysis: %s failed", name)
            self.notes.append(f"Analysis step '{name}' failed: {type(exc).__name__}: {exc}")
            value = None
        dt = time.perf_counter() - t
        self.result.timings[f"analysis_{name.replace(' ', '_')}"] = dt
        log.info("Analysis: %s (%.1f s)", name, dt)
        return value


def performance_plots(out: Path, result: TrainingResult, per_gene: Any, data: dict[str, Any] | None = None) -> list[Path]:
    """Render the performance plots from their data (:func:`~metadask.analysis.evaluation.performance_data`,
    computed here from the OOF frame when not given)."""
    from metadask.analysis import evaluation
    from metadask.analysis import plots as P

    if data is None:
        data = result.oof_parts.whole(evaluation.EVALUATION_COLUMNS, evaluation.performance_data, what="the performance plots' data")
    d = out / "performance_plots"
    paths = P.save_figure(P.roc_figure(data["curves"]), d / "roc_curves_meta")
    paths += P.save_figure(P.pr_figure(data["curves"]), d / "pr_curves_meta")
    paths += P.save_figure(P.calibration_figure(data["reliability"], data["ece"]), d / "calibration_curves")
    paths += P.save_figure(P.confusion_figure(data["confusion"]), d / "confusion_matrices")
    paths += P.save_figure(P.gene_f1_figure(per_gene), d / "gene_f1_base_vs_meta")
    return paths


def _n_parts(ctx: Any, rows: int) -> int:
    threads = getattr(getattr(ctx, "cluster", None), "total_threads", 0) or 1
    return max(1, min(2 * threads, math.ceil(rows / ROWS_PER_PARTITION)))


def _summary_text(result: TrainingResult, ctx: Any, out: Path, notes: list[str], screening_lines: list[str] | None = None) -> str:
    from metadask.analysis.summary import summary_dict, summary_text

    listed = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir()
                    if not p.name.startswith(".") and p.name not in ("journal", "cache", "RUN_INCOMPLETE"))
    meta = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "dataset": ctx.dataset.url, "genes": ctx.index.n_genes,
        "rows": ctx.index.n_rows, "parameters": ctx.config.to_dict(),
        "strategy_label": result.details.get("strategy_label", result.strategy),
        "artifacts": sorted({*listed, "report.html", "training_summary.txt", "training_summary.json"}), "notes": list(notes),
    }
    return summary_text(summary_dict(result, meta), screening_lines)


def run_analysis(result: TrainingResult, ctx: Any, out: Path, notes: list[str],
                 screening_lines: list[str] | None = None) -> list[str]:
    """Write every analysis artifact for ``result`` into ``out``; return their descriptions.

    Parameters
    ----------
    result
        The calibrated training result (``oof`` with ``prob_*`` / ``raw_*``, ``fold_metrics``).
    ctx
        The :class:`~metadask.strategies.base.TrainContext` (client, dataset, index, config).
    out
        The run's output directory.
    notes
        Lines for the summary's NOTES section; skipped or failed steps are appended here.
    screening_lines
        The "Features Used / Excluded" section, repeated in the report's summary.
    """
    from metadask.analysis import evaluation, importance, overfitting, report
    from metadask.analysis import shap as shap_mod

    cfg = ctx.config
    out = Path(out)
    plots = not cfg.skip_plots
    steps = _Steps(result, notes)
    if getattr(cfg, "device", "cpu") != "cpu":
        result.model.device = cfg.device  # SHAP and permutation importance on the workers' GPUs (--device)
    artifacts: list[str] = []
    if cfg.skip_plots:
        notes.append("Plots skipped (--skip-plots): no PNG / PDF files; CSV / JSON analysis files are written.")
    if cfg.skip_shap:
        notes.append("SHAP skipped (--skip-shap): no shap_analysis/; feature importance without SHAP columns.")

    ev = steps.run("evaluation", lambda: evaluation.write_evaluation(
        out, result, result.details.get("calibration_method", cfg.calib_method) if cfg.calibrate_per_class else None, plots=plots))
    ev_summary, per_gene, plot_data = ev if ev else (None, None, None)
    if ev:
        artifacts += [
            "meta_evaluation_summary.json - Out-of-fold evaluation: per-class metrics, confusion matrix, calibration before/after, base vs meta",
            "base_vs_meta_performance.tsv - Per-gene base vs meta TP/FP/FN, F1, top-k accuracy and differences",
            "ensemble_cv_results.csv - Per-fold generalisation on held-out genes (ensemble CV, or the strategy's gene CV)",
        ]
    # the sample lives on the workers (SHAP and permutation importance both use it); its tasks are
    # submitted first so that the workers compute while the client renders the performance plots
    rows = int(cfg.shap_sample)
    sample = steps.run("sample", lambda: shap_mod.draw_sample(
        ctx.client, ctx.dataset, ctx.index, result.features, result.model, n_rows=rows, seed=cfg.seed,
        n_parts=_n_parts(ctx, rows), contributions=not cfg.skip_shap))
    shap_result = imp_table = ovf = None
    try:
        if plots and per_gene is not None and steps.run("performance plots", lambda: performance_plots(out, result, per_gene, plot_data)):
            artifacts.append("performance_plots/ - ROC / PR curves base vs meta (binary and per class), reliability curves, "
                             "confusion matrices")
        ovf = steps.run("overfitting", lambda: overfitting.write_overfitting(out, result, cfg.n_estimators, plots=plots))
        if ovf:
            artifacts.append("overfitting_analysis/ - train vs validation loss per fit, best iteration, gap, recommended n_estimators")
        if sample is not None and not cfg.skip_shap:
            shap_result = steps.run("shap", lambda: shap_mod.compute_shap(ctx.client, sample))
            if shap_result is not None and steps.run("shap files", lambda: shap_mod.write_shap(out, shap_result, plots=plots)):
                n = shap_result.summary["sample"]["rows"]
                artifacts.append(f"shap_analysis/ - SHAP values on {n:,} sampled rows: mean |SHAP| per feature and class"
                                 + (", bar and beeswarm plots" if plots else ""))
        imp_table = steps.run("feature importance", lambda: _importance(ctx, result, sample, shap_result))
    finally:
        if sample is not None:
            sample.release()
    if imp_table is not None and steps.run("importance files", lambda: importance.write_importance(out, imp_table, plots=plots)):
        artifacts.append("feature_importance_analysis/ - gain / weight / cover, SHAP rank, permutation importance (in-sample), combined CSV"
                         + (" and comparison plot" if plots else ""))
    def _report() -> Path:
        return report.write_report(
            out, summary_text=_summary_text(result, ctx, out, notes, screening_lines), evaluation=ev_summary,
            fold_metrics=result.fold_metrics, per_gene=per_gene, importance=imp_table,
            overfitting=ovf[0] if ovf else None, shap=shap_result.summary if shap_result else None, notes=notes,
            full_body=result.details.get("full_body"),
            title=f"metadask training report: {result.details.get('strategy_label', result.strategy)}",
        )

    if steps.run("report", _report):
        artifacts.append("report.html - One-page report: summary, tables and every plot embedded")
    log.info("Analysis finished in %.1f s", time.perf_counter() - steps.t0)
    return artifacts


def _importance(ctx: Any, result: TrainingResult, sample: Any, shap_result: Any) -> Any:
    from metadask.analysis import importance

    gain = importance.model_importance(result.model)
    shap_table = shap_result.table if shap_result is not None else None
    ranking, score = (shap_table, "mean_abs_shap") if shap_table is not None else (gain, "gain")
    perm = None
    if sample is not None and ranking is not None:
        cols = importance.permutation_columns(result.features, ranking, score)
        threads = getattr(getattr(ctx, "cluster", None), "total_threads", 0) or 1
        perm = importance.permutation_importance(ctx.client, sample, cols, n_tasks=threads, seed=ctx.config.seed)
    return importance.combined_table(result.features, gain, shap_table, perm)
