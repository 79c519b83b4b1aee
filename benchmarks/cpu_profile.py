"""CPU profile: CPU-seconds per phase of a whole ``metadask train``, client and workers summed.

Each run is a fresh Python process (so start-up and imports count, as they do for the CLI)
that starts the default LocalCluster (2 workers x 1 thread), trains, and accounts every
CPU-second of its own process and of every child process (the Dask workers) to a phase:

* client phases (start-up, gene index, screening, strategy fit, calibration, full-body
  evaluation, core artifacts, each analysis step, shutdown): CPU of all processes between
  the phase's boundaries, exclusive of nested phases;
* worker tasks by kind (CV fits, final fits, out-of-fold prediction, screening, SHAP, ...):
  process CPU of the worker between a task's start and end of execution (one thread per
  worker, so one task runs at a time);
* bare XGBoost for the same trees: for up to ``--bare-sample`` fits of each kind, the same
  number of rows (drawn from the dataset) and trees in this process with one thread, no
  evaluation sets, scaled to the number of fits of that kind.

Quality (out of fold): binary F1 and AP (splice vs neither), AP per class, so variants can be
checked against the baseline (within 0.005).

Variants run side by side, alternating, in one invocation: ``--variant NAME[:TREE][=k=v,k=v]``
(``TREE`` a checkout of another revision, used through PYTHONPATH; ``k=v`` training options).

    python -m benchmarks cpu_profile [--genes 300 1000] [--strategies single batch-ensemble]
        [--n-estimators 100] [--n-folds 5] [--repeats 1] [--variant ...] [--dataset PATH] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# the child: one training run, profiled

def _cpu(proc: Any) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


class CpuClock:
    """CPU of this process and its live children (the Dask workers), attributed to phases."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self._children: dict[int, Any] = {}
        self._dead = 0.0  # CPU of children seen before that have exited
        self._last_child: dict[int, float] = {}
        self.phases: dict[str, float] = {}
        self.client: dict[str, float] = {}
        self.stack: list[str] = ["start-up"]
        self.mark, self.mark_client = self.total()

    def total(self) -> tuple[float, float]:
        import psutil

        own = _cpu(self.me)
        try:
            kids = self.me.children(recursive=True)
        except psutil.Error:
            kids = []
        seen = {}
        for k in kids:
            try:
                seen[k.pid] = _cpu(k)
            except psutil.Error:
                pass
        for pid, last in list(self._last_child.items()):
            if pid not in seen:
                self._dead += last
                del self._last_child[pid]
        self._last_child.update(seen)
        return own + sum(seen.values()) + self._dead, own

    def _attribute(self) -> None:
        now, own = self.total()
        top = self.stack[-1]
        self.phases[top] = self.phases.get(top, 0.0) + now - self.mark
        self.client[top] = self.client.get(top, 0.0) + own - self.mark_client
        self.mark, self.mark_client = now, own

    def enter(self, name: str) -> None:
        self._attribute()
        self.stack.append(name)

    def exit(self) -> None:
        self._attribute()
        self.stack.pop()

    def wrap(self, name: str, fn: Any) -> Any:
        import functools

        @functools.wraps(fn)
        def inner(*a: Any, **k: Any) -> Any:
            self.enter(name if isinstance(name, str) else name(*a, **k))
            try:
                return fn(*a, **k)
            finally:
                self.exit()
        return inner


def task_kind(key: Any) -> str:
    """A task key's kind: ``cv fits``, ``final fits``, ``oof prediction``, or Dask's key prefix."""
    import re

    from dask.utils import key_split

    s = str(key[0] if isinstance(key, tuple) else key)
    if s.startswith("metadask-"):
        s = s[len("metadask-"):]
        if re.match(r"fits?-(cv|f\d)", s) or re.match(r"fits?-b\d+-f", s):
            return "cv fits"
        if re.match(r"fits?-final", s):
            return "final fits"
        if re.match(r"fits?-(member|b\d)", s):
            return "member fits"
        if s.startswith(("oof", "predict")):
            return "oof prediction"
        return "metadask " + re.split(r"[-_]\d|-[0-9a-f]{8}", s)[0]
    return key_split(key)


class TaskCpu(WorkerPlugin):
    """Worker plugin: process CPU per task kind (one thread per worker: one task at a time)."""

    name = "metadask-cpu-profile"

    def setup(self, worker: Any) -> None:
        import psutil

        self.proc, self.start, self.by_kind = psutil.Process(), {}, {}

    def transition(self, key: Any, start: str, finish: str, **kw: Any) -> None:
        if finish == "executing":
            self.start[key] = _cpu(self.proc)
        elif start == "executing" and key in self.start:
            kind = task_kind(key)
            self.by_kind[kind] = self.by_kind.get(kind, 0.0) + _cpu(self.proc) - self.start.pop(key)


def _quality(oof: Any) -> dict[str, float]:
    import numpy as np
    from sklearn.metrics import average_precision_score, f1_score

    from metadask.dataset.schema import LABELS

    y = oof["label"].to_numpy()
    p = oof[[f"prob_{c}" for c in LABELS]].to_numpy(dtype=np.float64)
    w = oof["weight"].to_numpy() if "weight" in oof else None
    splice = p[:, 1] + p[:, 2]
    out = {"binary_f1": float(f1_score(y != 0, splice >= 0.5, sample_weight=w)),
           "binary_ap": float(average_precision_score(y != 0, splice, sample_weight=w))}
    for k, c in enumerate(LABELS):
        out[f"ap_{c}"] = float(average_precision_score(y == k, p[:, k], sample_weight=w))
    return out


def _bare(dataset: str, fits: Any, features: list[str], genes: list[str], params: dict[str, Any], per_kind: int,
          seed: int) -> dict[str, Any]:
    """CPU of bare XGBoost fits: same rows (count) and trees, one thread, no evaluation sets."""
    import numpy as np
    import xgboost as xgb

    from metadask.dataset.rows import GeneSet, read_rows
    from metadask.dataset.schema import LABELS
    from metadask.dataset.source import open_dataset

    if per_kind <= 0 or fits is None or not len(fits):
        return {}
    ds = open_dataset(dataset)
    x, codes, _ = read_rows(ds, GeneSet(tuple(sorted(genes)), tuple(ds.files)), features)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    p = {**params, "nthread": 1}
    for scope, group in fits.groupby("scope"):
        take = group.head(per_kind)
        cpu = 0.0
        for _, f in take.iterrows():
            rows = np.sort(rng.choice(len(x), size=min(int(f["rows"]), len(x)), replace=False))
            t0 = time.process_time()
            dm = xgb.QuantileDMatrix(x[rows], label=(codes[rows] == LABELS.index(f["cls"])).astype(np.float32),
                                     max_bin=p.get("max_bin", 256), nthread=1)
            xgb.train(p, dm, num_boost_round=int(f["n_trees"]))
            cpu += time.process_time() - t0
            del dm
        out[str(scope)] = {"fits": len(group), "measured": len(take), "cpu_seconds": cpu * len(group) / len(take),
                           "trees": int(group["n_trees"].sum())}
    return out


def child(spec: dict[str, Any]) -> dict[str, Any]:
    clock = CpuClock()  # first thing: start-up is everything before train() is entered
    import dask.config  # noqa: F401

    import metadask
    import metadask.analysis.run as arun
    import metadask.training as tr
    from metadask.cluster import connect

    clock.enter("start-up")  # imports above count as start-up; nested to keep one name
    opts = dict(spec["options"])
    for name in ("build_gene_index", "calibrate", "full_body_evaluation", "_write_core_artifacts", "_screen",
                 "sample_full_body"):
        if hasattr(tr, name):
            label = {"build_gene_index": "index", "_screen": "screening", "_write_core_artifacts": "core artifacts",
                     "full_body_evaluation": "full-body evaluation", "sample_full_body": "full-body sampling"}.get(name, name)
            setattr(tr, name, clock.wrap(label, getattr(tr, name)))
    get_strategy = tr.get_strategy

    def profiled_strategy(name: str) -> Any:
        cls = get_strategy(name)
        return type(cls.__name__, (cls,), {"fit": clock.wrap("strategy fit", cls.fit)})
    tr.get_strategy = profiled_strategy
    steps_run = arun._Steps.run
    arun._Steps.run = lambda self, name, fn: clock.wrap("analysis: " + name, steps_run)(self, name, fn)

    t_wall = time.perf_counter()
    with connect(n_workers=spec["workers"], threads_per_worker=1) as client:
        client.register_plugin(TaskCpu(), name=TaskCpu.name)
        clock.exit()
        clock.enter("other")
        result = metadask.train(spec["dataset"], spec["out"], client=client, overwrite=True, **opts)
        clock.exit()
        tasks = client.run(lambda dask_worker: dask_worker.plugins[TaskCpu.name].by_kind)
        clock.enter("shutdown")
    clock.exit()
    wall = time.perf_counter() - t_wall
    by_kind: dict[str, float] = {}
    for per in tasks.values():
        for k, v in per.items():
            by_kind[k] = by_kind.get(k, 0.0) + v
    fits = result.fits
    payload = {
        "phases": clock.phases, "client_phases": clock.client, "worker_tasks": by_kind,
        "total_cpu_seconds": sum(clock.phases.values()), "wall_seconds": wall,
        "rows": int(len(result.oof)), "features": len(result.features), "strategy": result.strategy,
        "fits": {str(s): {"count": int(len(g)), "trees": int(g["n_trees"].sum())} for s, g in fits.groupby("scope")},
        "quality": _quality(result.oof), "timings": dict(result.timings),
    }
    if spec.get("bare"):
        params = {**metadask.TrainConfig(**{k: v for k, v in opts.items() if k in ("seed",)}).xgb_params(),
                  "max_depth": opts.get("max_depth", 6)}
        payload["bare_xgboost"] = _bare(spec["dataset"], fits, list(result.features),
                                       sorted(result.oof["gene"].unique()), params, spec["bare"], 0)
    return payload


# ---------------------------------------------------------------------------------------------
# the parent: variants side by side

def _parse_variant(text: str) -> dict[str, Any]:
    """``NAME[:TREE][=k=v,k=v]`` -> {name, tree, options}."""
    head, _, opts = text.partition("=")
    name, _, tree = head.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, opts.split(",")):
        k, _, v = item.partition("=")
        options[k.strip()] = _value(v.strip())
    return {"name": name, "tree": tree or None, "options": options}


def _value(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def run_child(spec: dict[str, Any], tree: str | None) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(tree).resolve()) if tree else "", str(ROOT),
                                                      env.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory() as tmp:
        spec = {**spec, "out": os.path.join(tmp, "run")}
        res = os.path.join(tmp, "result.json")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", os.path.join(tmp, "spec.json"), res]
        Path(cmd[-2]).write_text(json.dumps(spec))
        proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"profiled run failed ({spec}):\n{proc.stderr[-4000:]}")
        return json.loads(Path(res).read_text())


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats of every phase / task / bare figure and quality value."""
    def med(get: Any, digits: int = 2) -> dict[str, float]:
        keys = sorted({k for r in runs for k in get(r)})
        return {k: round(_median([get(r).get(k, 0.0) for r in runs]), digits) for k in keys}
    out = {
        "phases": med(lambda r: r["phases"]), "worker_tasks": med(lambda r: r["worker_tasks"]),
        "total_cpu_seconds": round(_median([r["total_cpu_seconds"] for r in runs]), 1),
        "wall_seconds": round(_median([r["wall_seconds"] for r in runs]), 1),
        "quality": med(lambda r: r["quality"], 4),
        "client_phases": med(lambda r: r["client_phases"]),
        "runs": len(runs), "rows": runs[0]["rows"], "features": runs[0]["features"], "fits": runs[0]["fits"],
    }
    bare = [r.get("bare_xgboost") or {} for r in runs]
    if any(bare):
        out["bare_xgboost"] = {s: round(_median([b[s]["cpu_seconds"] for b in bare if s in b]), 1)
                               for s in sorted({s for b in bare for s in b})}
        out["bare_xgboost_total"] = round(sum(out["bare_xgboost"].values()), 1)
    phases = out["phases"]
    analysis = sum(v for k, v in phases.items() if k.startswith("analysis"))
    training = phases.get("strategy fit", 0.0)
    out["analysis_cpu_seconds"] = round(analysis, 1)
    out["analysis_over_training"] = round(analysis / training, 3) if training else None
    return out


def main(argv: list[str] | None = None) -> dict:
    from benchmarks.common import synthetic, write_result

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genes", type=int, nargs="+", default=[300, 1000])
    ap.add_argument("--strategies", nargs="+", default=["single", "batch-ensemble"])
    ap.add_argument("--n-estimators", type=int, default=100)
    ap.add_argument("--n-folds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME[:TREE][=k=v,...]: a code tree and/or training options (default: one variant 'current')")
    ap.add_argument("--dataset", default=None, help="profile this dataset instead of synthetic genes (e.g. real data)")
    ap.add_argument("--bare-sample", type=int, default=3, help="bare XGBoost fits measured per fit kind (0: none)")
    ap.add_argument("--option", action="append", default=[], help="k=v training option for every variant")
    ap.add_argument("--name", default=None, help="results file name (default cpu_profile[_tiny])")
    ap.add_argument("--tiny", action="store_true", help="smoke run: 30 genes, 10 trees, 2 folds, no SHAP-sized sample")
    args = ap.parse_args(argv)
    base_opts: dict[str, Any] = {"n_estimators": args.n_estimators, "n_folds": args.n_folds}
    if args.tiny:
        args.genes, base_opts = [30], {"n_estimators": 10, "n_folds": 2, "shap_sample": 300}
        args.bare_sample = min(args.bare_sample, 1)
    for item in args.option:
        k, _, v = item.partition("=")
        base_opts[k] = _value(v)
    variants = [_parse_variant(v) for v in args.variant] or [{"name": "current", "tree": None, "options": {}}]
    datasets = [(args.dataset, Path(args.dataset).name)] if args.dataset else \
        [(str(synthetic(g, genes_per_file=max(10, g // 10))), f"{g} genes") for g in args.genes]
    results: dict[str, Any] = {}
    for path, label in datasets:
        for strategy in args.strategies:
            runs: dict[str, list[dict[str, Any]]] = {v["name"]: [] for v in variants}
            for rep in range(args.repeats):
                for v in (variants if rep % 2 == 0 else variants[::-1]):  # alternate the order
                    spec = {"dataset": path, "workers": args.workers, "bare": args.bare_sample if rep == 0 else 0,
                            "options": {**base_opts, "strategy": strategy, **v["options"]}}
                    r = run_child(spec, v["tree"])
                    runs[v["name"]].append(r)
                    print(f"[{label} {strategy} {v['name']} #{rep + 1}] {r['total_cpu_seconds']:.1f} CPU-s, "
                          f"wall {r['wall_seconds']:.1f} s, binary F1 {r['quality']['binary_f1']:.4f}", flush=True)
            results[f"{label} / {strategy}"] = {name: {**summarise(rs), "each_run": rs} for name, rs in runs.items()}
    print(report(results))
    payload = {"n_estimators": base_opts.get("n_estimators"), "n_folds": base_opts.get("n_folds"),
               "workers": args.workers, "repeats": args.repeats, "variants": variants, "options": base_opts,
               "results": results, "load_average": os.getloadavg()}
    name = args.name or ("cpu_profile_tiny" if args.tiny else "cpu_profile")
    write_result(name, payload)
    return payload


def report(results: dict[str, Any]) -> str:
    from benchmarks.common import table

    lines = []
    for case, by_variant in results.items():
        names = list(by_variant)
        lines.append(f"\n{case}: CPU-seconds (client + workers), median over runs")
        phases = sorted({p for v in by_variant.values() for p in v["phases"]})
        rows = [("phase", "  ".join(f"{n:>14}" for n in names))]
        for p in phases:
            rows.append((p, "  ".join(f"{by_variant[n]['phases'].get(p, 0.0):>14.1f}" for n in names)))
        rows.append(("TOTAL", "  ".join(f"{by_variant[n]['total_cpu_seconds']:>14.1f}" for n in names)))
        tasks = sorted({p for v in by_variant.values() for p in v["worker_tasks"]})
        for t in tasks:
            rows.append(("  task: " + t, "  ".join(f"{by_variant[n]['worker_tasks'].get(t, 0.0):>14.1f}" for n in names)))
        if any("bare_xgboost_total" in v for v in by_variant.values()):
            rows.append(("bare XGBoost (same trees)", "  ".join(f"{by_variant[n].get('bare_xgboost_total', 0.0):>14.1f}" for n in names)))
        for q in sorted({q for v in by_variant.values() for q in v["quality"]}):
            rows.append(("OOF " + q, "  ".join(f"{by_variant[n]['quality'].get(q, float('nan')):>14.4f}" for n in names)))
        lines.append(table(rows))
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:  # a profiled run (see run_child): this file runs as a script
        json.dump(child(json.loads(Path(sys.argv[2]).read_text())), open(sys.argv[3], "w"))
    else:
        main()
