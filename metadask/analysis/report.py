"""``report.html``: one self-contained page (plots embedded as base64 PNG) for a person to read.

Built from what the analysis computed and wrote: the training summary, the evaluation summary,
per-fold CV, per-gene highlights, feature importance, overfitting, SHAP facts and every PNG
under the output directory. No external resource is referenced; PDFs are linked relatively.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from metadask.dataset.schema import LABELS
from metadask.io import write_text

PLOT_DIRS = ("full_body_evaluation", "performance_plots", "shap_analysis", "feature_importance_analysis", "overfitting_analysis")

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}pre{background:#f8f8f8;padding:1em;overflow-x:auto;font-size:.85em}
figure{margin:1em 0;border:1px solid #eee;padding:.5em}figure img{max-width:100%;height:auto}
figcaption{font-size:.85em;color:#555}.note{background:#fff8e1;border-left:4px solid #f0ad4e;padding:.4em .8em}
.good{color:#2e7d32}.bad{color:#c62828}nav a{margin-right:1em}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4f}"
    return html.escape(str(v))


def table(rows: Sequence[Sequence[Any]], header: Sequence[str], *, left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are left-aligned labels."""
    head = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(str(h))}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{_fmt(v)}</td>' for i, v in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def frame_table(df: pd.DataFrame, columns: Sequence[str] | None = None, *, left: int = 1) -> str:
    cols = [c for c in (columns or df.columns) if c in df]
    return table([[_py(v) for v in r] for r in df[cols].itertuples(index=False)], cols, left=left)


def _py(v: Any) -> Any:
    try:
        if pd.isna(v):
            return float("nan")
    except (TypeError, ValueError):
        pass
    return v.item() if hasattr(v, "item") else v


def embedded_images(out_dir: Path) -> list[tuple[str, str]]:
    """(relative path, data URI) of every PNG under the plot folders, in folder order."""
    found = []
    for d in PLOT_DIRS:
        for p in sorted((out_dir / d).glob("*.png")):
            data = base64.b64encode(p.read_bytes()).decode("ascii")
            found.append((p.relative_to(out_dir).as_posix(), f"data:image/png;base64,{data}"))
    return found


def _evaluation_section(ev: dict[str, Any]) -> str:
    m, b = ev["meta"], ev["base"]
    mb, bb = m["binary_splice_vs_neither"], b["binary_splice_vs_neither"]
    head = [
        ("Accuracy (argmax)", b["accuracy"], m["accuracy"]), ("Macro F1", b["macro_f1"], m["macro_f1"]),
        ("ROC-AUC (macro, one-vs-rest)", b["roc_auc_macro_ovr"], m["roc_auc_macro_ovr"]),
        ("Splice vs neither F1", bb["f1"], mb["f1"]), ("Splice vs neither AP", bb["ap"], mb["ap"]),
        ("Splice vs neither ROC-AUC", bb["roc_auc"], mb["roc_auc"]),
        ("False positives", bb["fp"], mb["fp"]), ("False negatives", bb["fn"], mb["fn"]),
        *[(f"Top-k accuracy {c}", b["topk_accuracy"][c], m["topk_accuracy"][c]) for c in ("donor", "acceptor")],
    ]
    rows = [(name, bv, mv, mv - bv if isinstance(mv, (int, float)) else "") for name, bv, mv in head]
    parts = [f'<p class="note">{html.escape(ev["evaluation"])}. {ev["n_rows"]:,} rows, {ev["n_genes"]:,} genes, '
             f'{ev.get("n_folds")} folds.</p>', table(rows, ["metric", "base", "meta", "meta - base"])]
    pc = [(cls, who, r["support"], r["precision"], r["recall"], r["f1"], r["ap"], r["roc_auc"])
          for cls in LABELS for who, blk in (("base", b), ("meta", m)) for r in [blk["per_class"][cls]]]
    parts += ["<h3>Per class</h3>", table(pc, ["class", "model", "support", "precision", "recall", "F1", "AP", "ROC-AUC"], left=2)]
    for who, blk in (("meta", m), ("base", b)):
        cm = blk["confusion_matrix"]["counts"]
        parts += [f"<h3>Confusion matrix, {who} (rows true, columns predicted)</h3>",
                  table([[LABELS[i], *cm[i]] for i in range(len(LABELS))], ["true \\ predicted", *LABELS])]
    cal = ev["calibration"]
    stages = [s for s in ("before", "after", "base_model") if s in cal]
    keys = ["brier_multiclass", "ece_top_label", *[f"{m_}_{c}" for m_ in ("brier", "ece") for c in LABELS]]
    parts += [f"<h3>Calibration ({html.escape(str(cal['method']))}; {cal['n_bins']} bins)</h3>",
              table([[k, *[cal[s][k] for s in stages]] for k in keys], ["metric", *stages])]
    bvm = ev["base_vs_meta"]
    ca, sn = bvm["class_argmax"], bvm["splice_vs_neither"]
    parts += ["<h3>Base vs meta on the same rows</h3>", table([
        ("class (argmax)", ca["corrections"], ca["regressions"], ca["net"]),
        ("splice vs neither", sn["corrections"], sn["regressions"], sn["corrections"] - sn["regressions"]),
    ], ["level", "corrections (base wrong, meta right)", "regressions (base right, meta wrong)", "net"])]
    return "\n".join(parts)


def full_body_html(metrics: dict[str, Any]) -> str:
    """The full-body section: base vs meta on every position, and the stored threshold."""
    from metadask.analysis.full_body import full_body_section

    t = metrics["thresholds"]
    return (f"<p>{html.escape(str(metrics['source']))}. Thresholds are cross-fitted over folds for "
            "<code>f1_at_threshold</code>; the stored decision threshold (used by <code>metadask predict</code>) is "
            f"{_fmt(t['meta_stored'])} on p_donor + p_acceptor.</p>"
            + table(full_body_section(metrics), ["metric", "base", "meta"]))


def build_report(
    out_dir: Path,
    *,
    summary_text: str,
    evaluation: dict[str, Any] | None,
    fold_metrics: pd.DataFrame | None,
    per_gene: pd.DataFrame | None,
    importance: pd.DataFrame | None,
    overfitting: dict[str, Any] | None,
    shap: dict[str, Any] | None,
    notes: Sequence[str],
    full_body: dict[str, Any] | None = None,
    title: str = "metadask training report",
) -> str:
    """The report's HTML (images read from ``out_dir``)."""
    sec: list[tuple[str, str, str]] = [("summary", "Training summary", f"<pre>{html.escape(summary_text)}</pre>")]
    if notes:
        sec.append(("notes", "Notes", "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)))
    if full_body:
        sec.append(("full-body", "Full-body evaluation (every position, out of fold)", full_body_html(full_body)))
    if evaluation:
        sec.append(("evaluation", "Evaluation (out-of-fold sampled rows)", _evaluation_section(evaluation)))
    if fold_metrics is not None and not fold_metrics.empty:
        cols = ["fold", "n_genes", "n_rows", "accuracy", "macro_f1", "meta_binary_f1", "base_binary_f1", "meta_binary_ap",
                "base_binary_ap", "meta_fp", "base_fp", "meta_fn", "base_fn"]
        sec.append(("cv", "Cross-validation folds (genes held out)", frame_table(fold_metrics, cols)))
    if per_gene is not None and not per_gene.empty:
        cols = ["gene", "fold", "n_rows", "base_f1", "meta_f1", "delta_f1", "base_fp", "meta_fp", "base_fn", "meta_fn",
                "corrections", "regressions"]
        d = per_gene.dropna(subset=["delta_f1"])
        body = (f"<p>{int((d['delta_f1'] > 0).sum())} genes improved, {int((d['delta_f1'] < 0).sum())} got worse, "
                f"{int((d['delta_f1'] == 0).sum())} unchanged (splice-vs-neither F1, out-of-fold).</p>"
                "<h3>Largest improvements</h3>" + frame_table(d[d["delta_f1"] > 0].nlargest(10, "delta_f1"), cols)
                + "<h3>Largest regressions</h3>" + frame_table(d[d["delta_f1"] < 0].nsmallest(10, "delta_f1"), cols))
        sec.append(("genes", "Per gene, base vs meta", body))
    if importance is not None and not importance.empty:
        cols = [c for c in ("feature", "gain", "gain_rank", "mean_abs_shap", "shap_rank", "perm_ap_drop_insample", "perm_rank")
                if c in importance]
        body = "".join(f"<h3>{cls}</h3>" + frame_table(importance[importance["cls"] == cls].head(15), cols) for cls in LABELS)
        sec.append(("importance", "Feature importance (top 15 per class)", body))
    if shap:
        a, s = shap["additivity"], shap["sample"]
        body = table([
            ("rows / genes", f"{s['rows']:,} / {s['genes']:,}"),
            ("class counts", ", ".join(f"{k} {v:,}" for k, v in s["class_counts"].items())),
            ("additivity max abs error", a["max_abs_error"]), ("additivity max relative error", a["max_rel_error"]),
            ("additivity passed", a["passed"]),
        ], ["", "value"]) + f'<p class="note">{html.escape(shap["note"])}</p>'
        sec.append(("shap", "SHAP sample", body))
    if overfitting:
        rows = [(cls, v["fits"], v["best_iteration_mean"], v["gap_at_best_mean"], v["valid_rise_after_best_max"],
                 v["recommended_n_estimators"]) for cls, v in overfitting.get("per_class", {}).items()]
        body = table(rows, ["class", "fits", "mean best iteration", "mean gap at best", "max validation rise after best",
                            "recommended n_estimators"])
        body += f"<p>Recommended n_estimators: {_fmt(overfitting.get('recommended_n_estimators'))}. "
        body += html.escape(overfitting.get("advice", overfitting.get("note", ""))) + "</p>"
        sec.append(("overfitting", "Overfitting", body))
    images = embedded_images(out_dir)
    figs = "".join(f'<figure><img src="{uri}" alt="{html.escape(rel)}" data-path="{html.escape(rel)}">'
                   f"<figcaption>{html.escape(rel)}</figcaption></figure>" for rel, uri in images)
    pdfs = sorted(p.relative_to(out_dir).as_posix() for d in PLOT_DIRS for p in (out_dir / d).glob("*.pdf"))
    if pdfs:
        figs += "<p>PDF versions: " + ", ".join(f'<a href="{html.escape(p)}">{html.escape(p)}</a>' for p in pdfs) + "</p>"
    sec.append(("plots", "Plots", figs or '<p class="note">No plots (--skip-plots).</p>'))
    nav = "".join(f'<a href="#{k}">{html.escape(t)}</a>' for k, t, _ in sec)
    body = "\n".join(f'<section id="{k}"><h2>{html.escape(t)}</h2>\n{c}\n</section>' for k, t, c in sec)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><nav>{nav}</nav>\n{body}\n</body></html>\n")


def write_report(out_dir: Path, **kw: Any) -> Path:
    return write_text(out_dir / "report.html", build_report(out_dir, **kw))
