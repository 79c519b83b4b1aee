"""Run benchmark cases: ``python -m benchmarks [CASE] [case options]``; no CASE runs the suite.

Cases are the modules of this package that define ``main(argv)``.
"""

from __future__ import annotations

import importlib
import sys

CASES = [
    "orchestration",   # single strategy vs bare XGBoost fits
    "real_data",       # real fly data, all strategies
    "scale_out",       # batch ensemble, 1 vs 2 workers
    "out_of_core",     # batch ensemble on data >= 4x worker memory
    "memory_model",    # estimated vs measured task peak
    "shap_speed",      # distributed pred_contribs vs shap.TreeExplainer
    "analysis_overhead",  # analysis wall time vs training wall time
    "inference",       # rows/s, single vs ensemble
    "growth",          # cost vs number of genes
    "shared_reads",    # a batch read once for its three classes vs once per class
    "ensemble_scoring",  # leave-batch-out scoring vs bare inplace_predict of the same members
    "cpu_profile",     # CPU-seconds per phase, client + workers, vs bare XGBoost
    "multi_output",    # one vector-leaf multi-class model vs three one-vs-rest models
    "final_model",     # refit vs CV-ensemble final model on held-out genes
    "full_body",       # every gene-body position, out of fold: base vs meta workflows, prediction speed
    "read_path",       # a gene set's rows: one open per file vs the earlier two passes vs bare pyarrow
    "client_memory",   # the client's peak over out-of-fold rows: assembly, calibration, fold metrics, the OOF file
    "tree_settings",   # booster settings (bins, depth, sampling, learning rate, patience): CPU vs out-of-fold quality
]


def available() -> list[str]:
    return [c for c in CASES if importlib.util.find_spec(f"benchmarks.{c}") is not None]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print("cases:", ", ".join(available()))
        return
    if argv and not argv[0].startswith("-"):
        case, rest = argv[0], argv[1:]
        if case not in available():
            sys.exit(f"unknown benchmark case {case!r}; known: {', '.join(available())}")
        importlib.import_module(f"benchmarks.{case}").main(rest)
        return
    for case in available():
        print(f"\n=== {case} ===")
        importlib.import_module(f"benchmarks.{case}").main(argv)


if __name__ == "__main__":
    main()
