"""``training_summary.txt`` / ``.json`` and ``feature_manifest.csv``, from a TrainingResult."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import pandas as pd

from metadask.dataset.schema import BASE_SCORE_COLUMNS, is_kmer
from metadask.io import write_csv, write_json, write_text
from metadask.results import TrainingResult


def feature_manifest(result: TrainingResult, all_features: list[str]) -> pd.DataFrame:
    """One row per dataset feature: used or excluded (with reason), family, model order."""
    order = {f: i for i, f in enumerate(result.features)}
    rows = []
    for f in all_features + [f for f in result.excluded if f not in all_features]:
        family = "base_score" if f in BASE_SCORE_COLUMNS else "kmer" if is_kmer(f) else "metadata" if f not in all_features else "feature"
        rows.append({
            "feature": f, "used": f in order, "model_index": order.get(f, -1), "family": family,
            "reason": result.excluded.get(f, ""),
        })
    return pd.DataFrame(rows)


def _mean_std(s: pd.Series) -> str:
    return f"{s.mean():.3f} ± {s.std(ddof=0):.3f}"


def summary_dict(result: TrainingResult, meta: dict[str, Any]) -> dict[str, Any]:
    fm = result.fold_metrics if result.fold_metrics is not None else pd.DataFrame()
    cv = {}
    for col in ("accuracy", "macro_f1", "meta_binary_f1", "base_binary_f1", "meta_binary_ap", "base_binary_ap",
                "ap_donor", "ap_acceptor", "meta_topk_donor", "base_topk_donor", "meta_topk_acceptor", "base_topk_acceptor"):
        if col in fm:
            cv[col] = {"mean": float(fm[col].mean()), "std": float(fm[col].std(ddof=0))}
    return {
        "training_date": meta.get("date") or _dt.datetime.now().isoformat(timespec="seconds"),
        "strategy": result.strategy,
        "strategy_label": meta.get("strategy_label", result.strategy),
        "strategy_reason": result.reason,
        "dataset": meta.get("dataset"),
        "genes": meta.get("genes"),
        "positions": meta.get("rows"),
        "features_used": len(result.features),
        "features_excluded": len(result.excluded),
        "parameters": meta.get("parameters", {}),
        "cv": cv,
        "details": _json_safe(result.details),
        "timings": result.timings,
        "notes": meta.get("notes", []),
        "artifacts": meta.get("artifacts", []),
        "out_dir": result.out_dir,
    }


def _json_safe(details: dict[str, Any]) -> dict[str, Any]:
    """Strategy details for JSON: DataFrames as lists of records, arrays as lists."""
    out: dict[str, Any] = {}
    for k, v in details.items():
        if isinstance(v, pd.DataFrame):
            out[k] = v.to_dict(orient="records")
        elif hasattr(v, "tolist"):
            out[k] = v.tolist()
        else:
            out[k] = v
    return out


def ensemble_lines(details: dict[str, Any]) -> list[str]:
    """The "ENSEMBLE DETAILS" lines: collections in the strategy details (members, batches,
    weights) by size, and the ensemble's own CV (``ensemble_cv_results``) as mean ± std."""
    lines: list[str] = []

    def numbers(v: Any) -> bool:
        return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, (int, float)) for x in v)

    def short(values: Any, n: int = 10) -> str:
        shown = ", ".join(f"{x:.3f}" if isinstance(x, float) else str(x) for x in list(values)[:n])
        return shown + (f", ... ({len(values)} in all)" if len(values) > n else "")

    for k, v in details.items():
        if k in ("ensemble_cv_results", "full_body") or not isinstance(v, (list, tuple, dict)) or not v:
            continue
        title = k.replace("_", " ").title()
        if isinstance(v, dict) and all(numbers(x) for x in v.values()):
            lines += [f"{title} ({key}): {short(x)}" for key, x in v.items()]
        elif isinstance(v, dict) and all(isinstance(x, (list, tuple)) for x in v.values()):
            lines.append(f"{title}: {len(v)} (sizes {short([len(x) for x in v.values()])})")
        else:
            lines.append(f"{title}: {len(v)} entries")
    ens = details.get("ensemble_cv_results")
    rows = pd.DataFrame(ens) if isinstance(ens, (list, pd.DataFrame)) else None
    if rows is not None and not rows.empty:
        lines.append(f"Ensemble CV folds: {len(rows)}")
        for col in ("accuracy", "macro_f1", "meta_binary_f1", "binary_f1", "ap_donor", "ap_acceptor"):
            if col in rows and pd.api.types.is_numeric_dtype(rows[col]):
                lines.append(f"Ensemble CV {col.replace('_', ' ')}: {_mean_std(rows[col])}")
    return lines


def summary_text(s: dict[str, Any], screening_lines: list[str] | None = None) -> str:
    """The seed document's summary layout."""
    p = s["parameters"]
    lines = [
        "META-MODEL TRAINING SUMMARY",
        "=" * 50,
        "",
        f"Training Date: {s['training_date']}",
        f"Training Strategy: {s['strategy_label']}",
        f"Strategy Reason: {s['strategy_reason']}",
        "Script: metadask train (unified pipeline)",
        "",
        "DATASET INFORMATION:",
        "-" * 20,
        f"Dataset: {s['dataset']}",
        f"Total Genes: {s['genes']:,}",
        f"Total Positions: {s['positions']:,}",
        f"Features Used: {s['features_used']:,}",
        f"Features Excluded: {s['features_excluded']:,}",
        f"Output Directory: {s['out_dir']}",
        "",
        "TRAINING PARAMETERS:",
        "-" * 20,
        f"CV Folds: {p.get('n_folds')}",
        f"N Estimators: {p.get('n_estimators')} (early stopping: {p.get('early_stopping_rounds') or 'off'})",
        f"Learning Rate: {p.get('learning_rate')}  Max Depth: {p.get('max_depth')}  Subsample: {p.get('subsample')}  "
        f"Colsample: {p.get('colsample_bytree')}  Max Bin: {p.get('max_bin')}",
        f"Calibration: {'per_class (' + str(s['details'].get('calibration_method', p.get('calib_method'))) + ')' if p.get('calibrate_per_class') else 'none'}",
        f"Seed: {p.get('seed')}",
    ]
    for k, v in s["details"].items():
        if isinstance(v, (str, int, float)):
            lines.append(f"{k.replace('_', ' ').title()}: {v}")
    ens = ensemble_lines(s["details"])
    if ens:
        lines += ["", "ENSEMBLE DETAILS:", "-" * 20, *ens]
    fb = s["details"].get("full_body")
    if fb:
        lines += ["", "FULL-BODY EVALUATION (every position users scan; out of fold):", "-" * 20, f"Source: {fb['source']}",
                  f"{'metric':<22}{'base':>10}{'meta':>10}"]
        for key in ("positions", "ap_donor", "ap_acceptor", "f1_at_0.5", "f1_at_threshold", "threshold", "best_f1",
                    "topk_donor", "topk_acceptor", "fp_per_10kb"):
            b, m = fb["base"].get(key), fb["meta"].get(key)
            fmt = (lambda v: "-" if v is None else f"{v:,.0f}" if key == "positions" else f"{v:.3f}")
            lines.append(f"{key:<22}{fmt(b):>10}{fmt(m):>10}")
        lines.append(f"Stored decision threshold: {fb['thresholds']['meta_stored']:.4f} (p_donor + p_acceptor)")
    lines += ["", "PERFORMANCE SUMMARY (out-of-fold sampled rows, genes never seen by the scoring model):", "-" * 20]
    names = {
        "accuracy": "CV Accuracy", "macro_f1": "CV F1 Macro", "meta_binary_f1": "Meta Binary F1 (splice vs neither)",
        "base_binary_f1": "Base Binary F1 (splice vs neither)", "meta_binary_ap": "Meta Binary AP", "base_binary_ap": "Base Binary AP",
        "ap_donor": "Meta AP Donor", "ap_acceptor": "Meta AP Acceptor", "meta_topk_donor": "Meta Top-k Donor",
        "base_topk_donor": "Base Top-k Donor", "meta_topk_acceptor": "Meta Top-k Acceptor", "base_topk_acceptor": "Base Top-k Acceptor",
    }
    for key, label in names.items():
        if key in s["cv"]:
            lines.append(f"{label}: {s['cv'][key]['mean']:.3f} ± {s['cv'][key]['std']:.3f}")
    if screening_lines:
        lines += ["", *screening_lines]
    if s.get("notes"):
        lines += ["", "NOTES:", "-" * 20, *s["notes"]]
    if s.get("timings"):
        lines += ["", "TIMINGS (s):", "-" * 20] + [f"{k}: {v:.1f}" for k, v in s["timings"].items()]
    lines += ["", "GENERATED ARTIFACTS:", "-" * 20] + [f"✅ {a}" for a in s.get("artifacts", [])]
    return "\n".join(lines) + "\n"


def write_summary(out_dir: Path, s: dict[str, Any], screening_lines: list[str] | None = None) -> None:
    write_json(out_dir / "training_summary.json", s)
    write_text(out_dir / "training_summary.txt", summary_text(s, screening_lines))


def write_feature_manifest(out_dir: Path, result: TrainingResult, all_features: list[str]) -> None:
    write_csv(out_dir / "feature_manifest.csv", feature_manifest(result, all_features))
