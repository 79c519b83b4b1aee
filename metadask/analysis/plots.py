"""Figures rendered from computed results (no metric is computed here).

matplotlib is imported lazily, with the non-interactive Agg backend when pyplot has not been
imported yet; our own figures use :class:`matplotlib.figure.Figure` directly (no pyplot global
state), the SHAP figures use the ``shap`` package's plotting (which needs pyplot) and are closed
straight after saving. Every file is written atomically (:func:`metadask.io.atomic_write`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metadask.dataset.schema import LABELS
from metadask.io import atomic_write

PNG_DPI = 110
MODEL_STYLE = {"base": {"color": "#7f7f7f", "linestyle": "--"}, "meta": {"color": "#1f77b4", "linestyle": "-"}}
TASK_TITLES = {"splice_vs_neither": "Splice site vs neither (binary)", "neither": "Neither (one-vs-rest)",
               "donor": "Donor (one-vs-rest)", "acceptor": "Acceptor (one-vs-rest)"}


def _matplotlib() -> Any:
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    return matplotlib


def new_figure(width: float, height: float) -> Any:
    """A pyplot-free figure (safe in threads and notebooks)."""
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, stem: Path, formats: Sequence[str] = ("pdf", "png"), *, tight: bool = False) -> list[Path]:
    """Save ``fig`` as ``stem.<fmt>`` for each format, atomically; return the paths.

    Our figures use constrained layout; ``tight`` (an extra layout pass) is for the shap
    package's figures, whose long feature names would otherwise be clipped.
    """
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        atomic_write(path, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, dpi=PNG_DPI,
                                                             bbox_inches="tight" if tight else None))
        paths.append(path)
    return paths


# -- performance ------------------------------------------------------------------------------

def _task_axes(fig: Any, curves: dict[str, Any]) -> list[tuple[str, Any]]:
    tasks = [t for t in ("splice_vs_neither", *LABELS) if curves.get(t)]
    axes = fig.subplots(2, 2).ravel()
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    return list(zip(tasks, axes))


def roc_figure(curves: dict[str, Any]) -> Any:
    """ROC curves, base vs meta, for the binary task and each class (from ``metrics.curve_data``)."""
    fig = new_figure(10, 9)
    for task, ax in _task_axes(fig, curves):
        for model, c in curves[task].items():
            ax.plot(c["fpr"], c["tpr"], label=f"{model} (AUC {c['auc']:.3f})", **MODEL_STYLE.get(model, {}))
        ax.plot([0, 1], [0, 1], color="#cccccc", linewidth=0.8)
        ax.set(title=TASK_TITLES[task], xlabel="False positive rate", ylabel="True positive rate", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right")
    fig.suptitle("ROC curves, base vs meta (out-of-fold)")
    return fig


def pr_figure(curves: dict[str, Any]) -> Any:
    """Precision-recall curves, base vs meta, for the binary task and each class."""
    fig = new_figure(10, 9)
    for task, ax in _task_axes(fig, curves):
        prevalence = None
        for model, c in curves[task].items():
            ax.plot(c["recall"], c["precision"], label=f"{model} (AP {c['ap']:.3f})", **MODEL_STYLE.get(model, {}))
            prevalence = c["prevalence"]
        if prevalence is not None:
            ax.axhline(prevalence, color="#cccccc", linewidth=0.8, label=f"prevalence {prevalence:.3f}")
        ax.set(title=TASK_TITLES[task], xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower left")
    fig.suptitle("Precision-recall curves, base vs meta (out-of-fold)")
    return fig


def calibration_figure(tables: dict[str, dict[str, pd.DataFrame]], ece: dict[str, dict[str, float]]) -> Any:
    """Reliability curves per class: ``tables[stage][cls]`` from ``metrics.reliability_table``
    for stages such as "before" (raw sigmoid) and "after" (calibrated)."""
    fig = new_figure(13, 4.6)
    axes = fig.subplots(1, len(LABELS))
    styles = {"before": {"color": "#d62728", "marker": "o"}, "after": {"color": "#1f77b4", "marker": "s"},
              "base_model": {"color": "#7f7f7f", "marker": "^", "linestyle": "--"}}
    labels = {"before": "meta, before calibration", "after": "meta, calibrated", "base_model": "base model"}
    for ax, cls in zip(axes, LABELS):
        ax.plot([0, 1], [0, 1], color="#cccccc", linewidth=0.8)
        for stage, by_cls in tables.items():
            t = by_cls[cls]
            t = t[t["count"] > 0]
            ax.plot(t["mean_predicted"], t["observed_frequency"], markersize=4,
                    label=f"{labels.get(stage, stage)} (ECE {ece[stage][cls]:.4f})", **styles.get(stage, {}))
        ax.set(title=f"{cls} (one-vs-rest)", xlabel="Mean predicted probability", ylabel="Observed frequency",
               xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle("Reliability curves (out-of-fold; equal-width bins)")
    return fig


def confusion_figure(matrices: dict[str, np.ndarray]) -> Any:
    """Row-normalised confusion matrices with counts, one panel per model."""
    fig = new_figure(5.2 * len(matrices), 4.6)
    axes = np.atleast_1d(fig.subplots(1, len(matrices)))
    for ax, (model, cm) in zip(axes, matrices.items()):
        cm = np.asarray(cm, dtype=np.float64)
        rows = cm.sum(axis=1, keepdims=True)
        norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, f"{int(cm[i, j]):,}\n{norm[i, j]:.3f}", ha="center", va="center", fontsize=9,
                        color="white" if norm[i, j] > 0.6 else "black")
        ax.set(xticks=range(len(LABELS)), yticks=range(len(LABELS)), xticklabels=LABELS, yticklabels=LABELS,
               xlabel="Predicted", ylabel="True", title=f"{model} (argmax)")
        fig.colorbar(im, ax=ax, shrink=0.8, label="row fraction")
    fig.suptitle("Confusion matrices (out-of-fold)")
    return fig


def gene_f1_figure(per_gene: pd.DataFrame) -> Any:
    """Per-gene splice-vs-neither F1, base (x) vs meta (y)."""
    fig = new_figure(5.5, 5.2)
    ax = fig.subplots()
    d = per_gene.dropna(subset=["base_f1", "meta_f1"])
    ax.scatter(d["base_f1"], d["meta_f1"], s=10, alpha=0.6, color="#1f77b4")
    ax.plot([0, 1], [0, 1], color="#cccccc", linewidth=0.8)
    better = int((d["meta_f1"] > d["base_f1"]).sum())
    worse = int((d["meta_f1"] < d["base_f1"]).sum())
    ax.set(xlabel="Base F1 per gene", ylabel="Meta F1 per gene", xlim=(0, 1.02), ylim=(0, 1.02),
           title=f"Per-gene F1: meta better {better}, worse {worse}, of {len(d)}")
    return fig


# -- training diagnostics -----------------------------------------------------------------------

def loss_curves_figure(curves: pd.DataFrame, best: pd.DataFrame) -> Any:
    """Train vs validation logloss per class; one line pair per fit (fold / batch).

    ``curves``: long frame (key, cls, round, train, valid); ``best``: key, cls, best_iteration.
    """
    fig = new_figure(14, 4.6)
    axes = fig.subplots(1, len(LABELS), sharey=False)
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
    for ax, cls in zip(axes, LABELS):
        part = curves[curves["cls"] == cls]
        for i, (key, c) in enumerate(part.groupby("key", sort=True)):
            color = colors[i % len(colors)]
            if c["train"].notna().any():
                ax.plot(c["round"], c["train"], color=color, linestyle="--", linewidth=1)
            if c["valid"].notna().any():
                ax.plot(c["round"], c["valid"], color=color, linestyle="-", linewidth=1.2, label=key)
            b = best[(best["key"] == key)]
            if len(b) and pd.notna(b["best_iteration"].iloc[0]):
                ax.axvline(float(b["best_iteration"].iloc[0]), color=color, linewidth=0.6, alpha=0.5)
        ax.set(title=f"{cls}: train (dashed) vs validation (solid)", xlabel="Boosting round", ylabel="logloss")
        ax.set_yscale("log")
        if part["key"].nunique() <= 10:
            ax.legend(fontsize=7)
    fig.suptitle("Loss curves per fit (validation = held-out genes; vertical lines: best iteration)")
    return fig


def importance_figure(table: pd.DataFrame, methods: dict[str, str], top: int = 15) -> Any:
    """Per class, the top features (by the first method) with each method's score scaled to max 1.

    ``methods``: column -> legend label, e.g. {"mean_abs_shap": "mean |SHAP|", "gain": "gain"}.
    """
    fig = new_figure(15, 0.32 * top + 2.2)
    axes = fig.subplots(1, len(LABELS))
    first = next(iter(methods))
    width = 0.8 / len(methods)
    for ax, cls in zip(axes, LABELS):
        t = table[table["cls"] == cls].sort_values(first, ascending=False).head(top)[::-1]
        pos = np.arange(len(t))
        for i, (col, label) in enumerate(methods.items()):
            v = t[col].to_numpy(dtype=np.float64)
            full = table.loc[table["cls"] == cls, col].to_numpy(dtype=np.float64)
            scale = np.nanmax(np.abs(full)) if np.isfinite(full).any() and np.nanmax(np.abs(full)) > 0 else 1.0
            ax.barh(pos + i * width - 0.4 + width / 2, np.nan_to_num(v / scale), height=width, label=label)
        ax.set_yticks(pos, t["feature"], fontsize=8)
        ax.set(title=cls, xlabel="score / max score of the method")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Feature importance by method (each scaled to its maximum)")
    return fig


def message_figure(text: str) -> Any:
    """A figure that states why there is nothing to draw (keeps the artifact set identical)."""
    fig = new_figure(8, 2)
    fig.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return fig


# -- SHAP (the shap package's plots) ------------------------------------------------------------

BEESWARM_ROWS = 2_000
"""Rows drawn in a beeswarm (a seeded subset of the sample; the bar plot uses every row)."""


def shap_figures(values: np.ndarray, base_value: float, data: np.ndarray, names: Sequence[str], cls: str,
                 seed: int = 0) -> tuple[Any, Any]:
    """(bar figure, beeswarm figure) for one class from ``shap.Explanation`` objects.

    The caller must close them with :func:`close`.
    """
    _matplotlib()
    import matplotlib.pyplot as plt
    import shap

    values = np.asarray(values, dtype=np.float64)
    data = np.asarray(data, dtype=np.float64)

    def explanation(rows: Any) -> Any:
        return shap.Explanation(values=values[rows], base_values=np.full(len(values[rows]), base_value),
                                data=data[rows], feature_names=list(names))

    n = len(names)
    bar = plt.figure(figsize=(8, 0.32 * n + 1.6))
    shap.plots.bar(explanation(slice(None)), max_display=n, ax=bar.gca(), show=False)
    bar.gca().set_title(f"{cls}: mean |SHAP| over {len(values):,} rows (margin space), top {n} features")
    rows = np.arange(len(values))
    if len(rows) > BEESWARM_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), size=BEESWARM_ROWS, replace=False))
    bee = plt.figure(figsize=(8, 0.32 * n + 1.6))
    shap.plots.beeswarm(explanation(rows), max_display=n, ax=bee.gca(), show=False, plot_size=None,
                        group_remaining_features=False)
    bee.gca().set_title(f"{cls}: SHAP values of {len(rows):,} rows (margin space)")
    return bar, bee


def close(*figs: Any) -> None:
    """Release figures made through pyplot (no-op for pyplot-free figures)."""
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        for f in figs:
            plt.close(f)
