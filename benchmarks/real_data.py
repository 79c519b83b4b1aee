"""Real data, all strategies: the meta-model vs the base model (SpliceAI) on real fly genes.

For each dataset (``real_fly_3mer``, ``real_fly_5mer``: 548 D. melanogaster chr2R genes,
35,852 rows, SpliceAI scores; see their PROVENANCE.md) and each strategy (single,
batch-ensemble, distributed, incremental), trains with the default options (800 trees max,
early stopping, 5 folds, analysis off) on a fresh LocalCluster (2 workers x 1 thread by
default) and reports:

* wall time of ``train()`` and of its training phase;
* peak memory per worker: the largest worker RSS sampled every 0.5 s (``client.run``) and
  the largest process max-RSS the fits recorded (strategies that record it);
* pooled out-of-fold metrics (every row scored by models that never saw its gene), for the
  meta-model and for the base model on the same rows: macro F1, AP per class,
  splice-vs-neither F1 (donor + acceptor >= 0.5) and AP, mean top-k accuracy per gene.

Targets on real_fly_3mer: meta binary F1 >= 0.90 (SpliceAI 0.617), AP donor and acceptor
>= 0.95, batch ensemble within 0.01 of the single model. The batch ensemble uses
``--max-genes-per-batch 150`` (4 batches of ~137 genes) so it really is an ensemble here.

Strategies that cannot be imported are recorded as "not available"; a failing run is
recorded with its error and the others still run. A run of some datasets / strategies keeps
the other successful entries of an earlier ``benchmarks/results/real_data.json`` made with the
same options (each entry has its own date and load average; ``--fresh`` starts over). Without the shared data the case prints
why and records the dataset as skipped.

    python -m benchmarks real_data [--datasets real_fly_3mer,real_fly_5mer]
        [--strategies single,batch-ensemble,distributed,incremental] [--max-genes-per-batch 150]
        [--n-estimators 800] [--n-folds 5] [--set calib_method=isotonic ...] [--tiny]

``--tiny`` (the smoke test) uses a 30-gene synthetic dataset, 2 folds and 10 trees instead,
and only single and batch-ensemble unless ``--strategies`` says otherwise.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import traceback
from typing import Any

from benchmarks.common import PeakRSS, synthetic, write_result

DATASETS = ("real_fly_3mer", "real_fly_5mer")
STRATEGIES = ("single", "batch-ensemble", "distributed", "incremental")
BASE_REFERENCE = {"binary_f1": 0.617, "ap_donor": 0.827, "ap_acceptor": 0.815}
"""SpliceAI on real_fly_3mer's rows (PROVENANCE.md); the run recomputes it on the same rows."""
TARGETS = {"meta_binary_f1": 0.90, "ap_donor": 0.95, "ap_acceptor": 0.95, "ensemble_vs_single": 0.01}


# -- measuring --------------------------------------------------------------------------

def _worker_rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class WorkerRSS:
    """Sample every worker's RSS with ``client.run`` in a thread; ``peaks``: address -> bytes."""

    def __init__(self, client: Any, interval: float = 0.5):
        self.client, self.interval = client, interval
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()

    def _sample(self) -> None:
        try:
            for addr, rss in self.client.run(_worker_rss).items():
                self.peaks[addr] = max(self.peaks.get(addr, 0), int(rss))
        except Exception:  # a worker restarting or the cluster closing: skip this sample
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> WorkerRSS:
        self._sample()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self._sample()

    @property
    def peak(self) -> int:
        return max(self.peaks.values(), default=0)


def strategy_available(name: str) -> str | None:
    """None when ``name`` can be used, else why not."""
    try:
        from metadask.strategies.registry import get_strategy

        get_strategy(name)
        return None
    except Exception as exc:  # ImportError, ConfigError (unknown name), a half-written module
        first = str(exc).splitlines()[0] if str(exc) else ""
        return f"not available ({type(exc).__name__}{': ' + first if first else ''})"


def train_measured(path: str, out: str, strategy: str, opts: dict[str, Any], *, workers: int = 2,
                   threads: int = 1, memory_limit: str | None = None) -> dict[str, Any]:
    """``metadask.train`` on a fresh LocalCluster, with wall time and memory. Returns a record.

    A fresh cluster per run because the fits' peak RSS is the worker process's max RSS
    since it started. Cluster start-up is outside the timed region.
    """
    from distributed import Client, LocalCluster

    import metadask

    kw: dict[str, Any] = {"memory_limit": memory_limit} if memory_limit else {}
    with LocalCluster(n_workers=workers, threads_per_worker=threads, dashboard_address=":0",
                      env={"OMP_WAIT_POLICY": "PASSIVE"}, **kw) as cluster, Client(cluster) as client:
        client.wait_for_workers(workers)
        load = os.getloadavg()
        with PeakRSS() as client_mem, WorkerRSS(client) as worker_mem:
            t0 = time.perf_counter()
            result = metadask.train(path, out, client=client, strategy=strategy, analysis=False, overwrite=True,
                                    **opts)
            wall = time.perf_counter() - t0
    fits = result.fits
    fit_peak = int(fits["peak_rss"].max()) if "peak_rss" in fits and len(fits) else 0
    return {
        "result": result, "wall_seconds": wall, "training_seconds": result.timings.get("training"),
        "timings": result.timings, "worker_peak_rss_sampled": worker_mem.peak,
        "worker_peak_rss_fits": fit_peak, "worker_peak_rss": max(worker_mem.peak, fit_peak),
        "client_peak_rss": client_mem.peak, "load_average_before": load, "load_average_after": os.getloadavg(),
    }


def oof_metrics(result: Any) -> dict[str, Any]:
    """Pooled out-of-fold metrics, meta and base on the same rows, plus per-fold spread."""
    from metadask.analysis.metrics import base_proba, classification_metrics, prediction_metrics

    oof = result.oof
    m = prediction_metrics(oof)
    base = classification_metrics(oof["label"].to_numpy(), base_proba(oof))
    keep = ("n_genes", "n_rows", "accuracy", "macro_f1", "f1_neither", "f1_donor", "f1_acceptor", "ap_neither",
            "ap_donor", "ap_acceptor", "meta_binary_f1", "meta_binary_ap", "meta_binary_roc_auc", "meta_fp",
            "meta_fn", "meta_topk_donor", "meta_topk_acceptor", "base_binary_f1", "base_binary_ap",
            "base_binary_roc_auc", "base_fp", "base_fn", "base_topk_donor", "base_topk_acceptor",
            "base_accuracy", "base_macro_f1")
    out: dict[str, Any] = {k: m[k] for k in keep}
    for c in ("neither", "donor", "acceptor"):
        out[f"base_ap_{c}"] = base[f"ap_{c}"]
    fm = result.fold_metrics
    if fm is not None and len(fm):
        out["folds"] = int(len(fm))
        for k in ("meta_binary_f1", "macro_f1", "ap_donor", "ap_acceptor"):
            out[f"fold_{k}_mean"] = float(fm[k].mean())
            out[f"fold_{k}_sd"] = float(fm[k].std(ddof=0))
    return out


def _model_facts(result: Any) -> dict[str, Any]:
    fits = result.fits
    facts: dict[str, Any] = {"fits": int(len(fits)), "features": len(result.features)}
    if "n_trees" in fits and len(fits):
        final = fits[fits["scope"].isin(["final", "member"])] if "scope" in fits else fits
        facts["trees_final"] = {str(r.key): int(r.n_trees) for r in final.itertuples()} if len(final) else {}
    for k in ("n_batches", "genes_per_batch", "ensemble_cv"):
        if k in result.details:
            facts[k] = result.details[k]
    return facts


# -- reporting ----------------------------------------------------------------------------

ROWS = [
    ("wall time (s)", "wall_seconds", "{:.1f}"),
    ("training phase (s)", "training_seconds", "{:.1f}"),
    ("peak RSS per worker (MiB)", "worker_peak_rss", "mib"),
    ("macro F1", "macro_f1", "{:.3f}"),
    ("AP neither", "ap_neither", "{:.3f}"),
    ("AP donor", "ap_donor", "{:.3f}"),
    ("AP acceptor", "ap_acceptor", "{:.3f}"),
    ("binary F1 (splice vs neither)", "meta_binary_f1", "{:.3f}"),
    ("binary AP", "meta_binary_ap", "{:.3f}"),
    ("top-k per gene, donor", "meta_topk_donor", "{:.3f}"),
    ("top-k per gene, acceptor", "meta_topk_acceptor", "{:.3f}"),
    ("FP / FN", ("meta_fp", "meta_fn"), "pair"),
]
BASE_KEYS = {"macro_f1": "base_macro_f1", "ap_neither": "base_ap_neither", "ap_donor": "base_ap_donor",
             "ap_acceptor": "base_ap_acceptor", "meta_binary_f1": "base_binary_f1",
             "meta_binary_ap": "base_binary_ap", "meta_topk_donor": "base_topk_donor",
             "meta_topk_acceptor": "base_topk_acceptor", ("meta_fp", "meta_fn"): ("base_fp", "base_fn")}


def _fmt(rec: dict[str, Any], key: Any, fmt: str) -> str:
    if isinstance(key, tuple):
        return "/".join(str(rec.get(k, "-")) for k in key) if all(k in rec for k in key) else "-"
    v = rec.get(key)
    if v is None:
        return "-"
    if fmt == "mib":
        return f"{v / 2**20:.0f}" if v else "-"
    return fmt.format(v)


def comparison_table(dataset: str, runs: dict[str, dict[str, Any]]) -> str:
    """Metrics down, models across: the base model first (same rows), then each strategy."""
    ok = {s: r for s, r in runs.items() if r.get("status") == "ok"}
    base_src = next(iter(ok.values()), None)
    cols = ["base model"] + list(runs)
    lines = [[f"{dataset}"] + cols]
    for label, key, fmt in ROWS:
        row = [label]
        bkey = BASE_KEYS.get(key)
        row.append(_fmt(base_src, bkey, fmt) if base_src is not None and bkey else "")
        for s, r in runs.items():
            row.append(_fmt(r, key, fmt) if r.get("status") == "ok" else _short(r.get("status", "-")))
        lines.append(row)
    widths = [max(len(line[i]) for line in lines) for i in range(len(cols) + 1)]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines)
    notes = [f"  {s}: {r['status']}" for s, r in runs.items() if r.get("status") != "ok"]
    return text + ("\n" + "\n".join(notes) if notes else "")


def _short(status: str) -> str:
    return "n/a" if status.startswith("not available") else status.split(":")[0]


def check_targets(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Targets of real_fly_3mer: single's figures, and batch-ensemble vs single within 0.01.

    The other strategies' differences from single are recorded too, for information (no
    target: incremental is a linear model, distributed the single model's fits on xgboost.dask).
    """
    out: dict[str, Any] = {}
    single = runs.get("single", {})
    if single.get("status") == "ok":
        for key in ("meta_binary_f1", "ap_donor", "ap_acceptor"):
            out[key] = {"value": single[key], "target": f">= {TARGETS[key]}", "met": single[key] >= TARGETS[key]}
    for name, r in runs.items():
        if name != "single" and r.get("status") == "ok" and single.get("status") == "ok":
            diffs = {k: r[k] - single[k] for k in ("meta_binary_f1", "macro_f1", "ap_donor", "ap_acceptor")}
            entry: dict[str, Any] = {"value": diffs}
            if name == "batch-ensemble":
                entry["target"] = f"|difference| <= {TARGETS['ensemble_vs_single']}"
                entry["met"] = all(abs(d) <= TARGETS["ensemble_vs_single"] for d in diffs.values())
            out[f"{name}_vs_single"] = entry
    return out


def target_lines(targets: dict[str, Any]) -> list[str]:
    lines = []
    for key, t in targets.items():
        v = t["value"]
        shown = f"{v:.3f}" if isinstance(v, float) else ", ".join(f"{k} {d:+.3f}" for k, d in v.items())
        verdict = ("met" if t["met"] else "MISSED") + f" ({t['target']})" if "target" in t else "(no target)"
        lines.append(f"  {key}: {shown}  {verdict}")
    return lines


# -- main ---------------------------------------------------------------------------------

def _parse_set(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE (a training option), found {item!r}")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def run_dataset(name: str, path: str, strategies: list[str], opts: dict[str, Any], args: argparse.Namespace,
                tmp: str) -> dict[str, dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    for strategy in strategies:
        why = strategy_available(strategy)
        if why:
            print(f"  {strategy}: {why}", flush=True)
            runs[strategy] = {"status": why}
            continue
        sopts = dict(opts)
        if strategy == "batch-ensemble":
            sopts["max_genes_per_batch"] = args.max_genes_per_batch
        print(f"  {strategy}: training ...", flush=True)
        try:
            rec = train_measured(path, os.path.join(tmp, f"{name}-{strategy}"), strategy, sopts,
                                 workers=args.workers, threads=args.threads_per_worker)
        except Exception as exc:
            traceback.print_exc()
            runs[strategy] = {"status": f"failed: {type(exc).__name__}: {exc}"[:500]}
            continue
        result = rec.pop("result")
        runs[strategy] = {"status": "ok", "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "options": sopts,
                          "dask_environment": {k: v for k, v in os.environ.items() if k.startswith("DASK_")}, **rec,
                          **_model_facts(result), **oof_metrics(result)}
        r = runs[strategy]
        print(f"  {strategy}: {r['wall_seconds']:.0f} s, binary F1 {r['meta_binary_f1']:.3f} "
              f"(base {r['base_binary_f1']:.3f}), AP donor {r['ap_donor']:.3f}, acceptor {r['ap_acceptor']:.3f}",
              flush=True)
    return runs


def earlier_datasets(result_name: str, opts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The datasets of an earlier result file of this name, if it was run with the same options."""
    import json

    from benchmarks import common

    try:
        old = json.loads((common.RESULTS / f"{result_name}.json").read_text())
    except (OSError, ValueError):
        return {}
    same = old.get("options") == json.loads(json.dumps(opts))
    return {k: v for k, v in old.get("datasets", {}).items() if v.get("status") == "ok"} if same else {}


def earlier_runs(result_name: str, dataset: str, opts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Successful runs of ``dataset`` in an earlier result file with the same options.

    So ``--strategies distributed`` reruns one strategy and keeps the others' figures (each
    run records its own date and load average).
    """
    runs = earlier_datasets(result_name, opts).get(dataset, {}).get("strategies", {})
    return {s: r for s, r in runs.items() if r.get("status") == "ok"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated names under ../shared/data")
    ap.add_argument("--strategies", default=None,
                    help=f"comma-separated (default {','.join(STRATEGIES)}; with --tiny single,batch-ensemble)")
    ap.add_argument("--n-estimators", type=int, default=800)
    ap.add_argument("--n-folds", type=int, default=5)
    ap.add_argument("--max-genes-per-batch", type=int, default=150, help="batch-ensemble only (150: 4 batches)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads-per-worker", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any other training option, e.g. calib_method=isotonic (recorded with the result)")
    ap.add_argument("--name", default="real_data", help="result file name (benchmarks/results/NAME.json)")
    ap.add_argument("--fresh", action="store_true",
                    help="do not keep the other datasets / strategies of an earlier result file of the same name")
    ap.add_argument("--tiny", action="store_true", help="smoke run: 30 synthetic genes, 2 folds, 10 trees")
    args = ap.parse_args(argv)
    if args.strategies is None:
        # tiny: the benchmark's code is the same for every strategy (batch-ensemble adds its
        # batch option); the strategies themselves have their own tests
        args.strategies = "single,batch-ensemble" if args.tiny else ",".join(STRATEGIES)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    extra = _parse_set(args.set)
    if args.tiny:
        args.n_estimators, args.n_folds, args.max_genes_per_batch = 10, 2, 15
        datasets = {"synthetic_30": str(synthetic(30, genes_per_file=10))}
    else:
        from metadask.testing import real_data_path

        datasets = {}
        for name in (d.strip() for d in args.datasets.split(",") if d.strip()):
            p = real_data_path(name)
            datasets[name] = str(p) if p is not None else None
    opts = {"n_folds": args.n_folds, "n_estimators": args.n_estimators, "seed": 42, **extra}
    payload: dict[str, Any] = {
        "options": {**opts, "max_genes_per_batch (batch-ensemble)": args.max_genes_per_batch,
                    "workers": args.workers, "threads_per_worker": args.threads_per_worker},
        "targets": TARGETS, "base_reference_real_fly_3mer": BASE_REFERENCE, "datasets": {},
        "dask_environment": {k: v for k, v in os.environ.items() if k.startswith("DASK_")},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in datasets.items():
            print(f"\n{name}", flush=True)
            if path is None:
                msg = (f"skipped: dataset {name!r} not found (looked in $METADASK_REAL_DATA and ../shared/data); "
                       "the real fly data is not part of this repository")
                print("  " + msg)
                payload["datasets"][name] = {"status": msg}
                continue
            runs = run_dataset(name, path, strategies, opts, args, tmp)
            if not (args.fresh or args.tiny):
                merged = {**earlier_runs(args.name, name, payload["options"]), **runs}
                runs = {k: merged[k] for k in sorted(merged, key=lambda k: (STRATEGIES + (k,)).index(k))}
            entry: dict[str, Any] = {"status": "ok", "path": path, "strategies": runs}
            if not args.tiny:  # the issue states the targets on real_fly_3mer; checked on each dataset
                entry["targets"] = check_targets(runs)
            payload["datasets"][name] = entry
            print()
            print(comparison_table(name, runs))
            for line in target_lines(entry.get("targets", {})):
                print(line)
    if not (args.fresh or args.tiny):
        for name, entry in earlier_datasets(args.name, payload["options"]).items():
            payload["datasets"].setdefault(name, entry)
    print(f"\nload average {' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    write_result(args.name + ("_tiny" if args.tiny else ""), payload)
    return payload


if __name__ == "__main__":
    main()
