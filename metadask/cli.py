"""``metadask`` command line: make-dataset, inspect, train, predict.

Errors metadask raises on purpose (:class:`~metadask.errors.MetadaskError`) become one line
on stderr and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from metadask.errors import ConfigError, MetadaskError
from metadask.log import setup_logging

log = logging.getLogger("metadask")


def _storage_options(values: tuple[str, ...], url: str = "") -> dict[str, Any]:
    """``key=value`` pairs as fsspec storage options (``true``/``false`` become booleans).

    For ``s3://`` URLs, ``endpoint_url`` goes into ``client_kwargs`` where s3fs expects it.
    """
    out: dict[str, Any] = {}
    for item in values:
        if "=" not in item:
            raise ConfigError(f"--storage-option expects key=value (found {item!r}). Use e.g. --storage-option anon=true.")
        key, value = item.split("=", 1)
        low = value.lower()
        out[key] = True if low == "true" else False if low == "false" else value
    if "endpoint_url" in out and str(url).startswith(("s3://", "s3a://")):
        out.setdefault("client_kwargs", {})["endpoint_url"] = out.pop("endpoint_url")
    return out


def _sampling_rules(values: tuple[str, ...]) -> dict[str, float | int]:
    """``RULE=VALUE`` pairs as sampling rules (numbers; validated by the rules themselves)."""
    out: dict[str, float | int] = {}
    for item in values:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[key.strip()] = int(value) if key.strip() == "near_window" else float(value)
        except ValueError:
            raise ConfigError(f"--sampling expects RULE=NUMBER (found {item!r}). Use e.g. --sampling easy_rate=0.02.") from None
    return out


def _parse_list(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def _with_settings(f: Any) -> Any:
    """Add ``--set KEY=VALUE`` (repeatable) and run the command under those ``metadask.*`` settings.

    The settings go through ``dask.config`` (as ``DASK_METADASK__...`` variables and
    ``dask.config.set`` do); the keys are those of metadask.yaml (docs/training.md lists them).
    """
    @functools.wraps(f)
    def run(*args: Any, settings: tuple[str, ...] = (), **kw: Any) -> Any:
        import dask.config

        from metadask.config import parse_settings

        with dask.config.set(parse_settings(settings)):
            return f(*args, **kw)

    return click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
                        help="A metadask setting (repeatable), e.g. incremental.epochs=5, distributed.worker-wait=120, "
                             "ensemble-cv-members=0; see docs/training.md.")(run)


_OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


TRAIN_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Data", ("dataset", "label_column", "gene_column", "metadata_columns", "weight_column", "storage")),
    ("Full bodies: evaluation, sampling, mining", ("eval_dataset", "full_body_sampling", "sampling", "tree_weight_power",
                                                   "hard_negative_rounds")),
    ("Output", ("out_dir", "overwrite", "resume")),
    ("Cluster", ("scheduler", "n_workers", "threads_per_worker", "memory_limit", "connect_timeout", "min_workers",
                 "worker_wait_timeout", "performance_report", "cluster", "k8s_image", "k8s_workers", "k8s_worker_memory",
                 "k8s_namespace")),
    ("Plan and strategy", ("strategy", "n_folds", "seed", "valid_size", "max_memory_gb", "train_all_genes",
                           "max_genes_per_batch", "ensemble_method", "ensemble_cv", "final_model", "settings")),
    ("Screening", ("screening_sample", "leakage_threshold", "leakage_auc", "default_exclusions", "leakage_policy",
                   "max_missing", "exclude_features", "keep_features", "screening_from")),
    ("Model (boosted strategies)", ("n_estimators", "learning_rate", "max_depth", "subsample", "colsample_bytree", "max_bin",
                                    "early_stopping_rounds", "device")),
    ("Calibration", ("calibrate_per_class", "calib_method")),
    ("Analysis", ("shap_sample", "skip_shap", "skip_plots", "no_analysis")),
    ("Logging", ("verbose", "help")),
)
"""``train --help`` by stage of the flow; docs/training.md has one options table per section (a test compares them)."""


class _SectionedCommand(click.Command):
    """A command whose ``--help`` lists its options in ``sections`` (title, parameter names)."""

    def __init__(self, *args: Any, sections: tuple[tuple[str, tuple[str, ...]], ...] = (), **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.sections = sections

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = {p.name: p.get_help_record(ctx) for p in self.get_params(ctx)}
        placed: set[str | None] = set()
        for title, names in self.sections:
            rows = [records[n] for n in names if records.get(n)]
            placed.update(names)
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
        rest = [r for n, r in records.items() if n not in placed and r]
        if rest:
            with formatter.section("Other options"):
                formatter.write_dl(rest)


class _Group(click.Group):
    """Run a command, turning MetadaskError into one line and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MetadaskError as exc:
            if ctx.params.get("debug") or (ctx.obj or {}).get("debug"):
                raise
            click.echo(f"metadask: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:
            # disk full / permissions met by a writer without its own mapping: still one line
            if exc.errno not in _OUTPUT_ERRNOS or ctx.params.get("debug") or (ctx.obj or {}).get("debug"):
                raise
            from metadask.io import output_error

            msg = output_error(exc.filename, exc) if exc.filename else f"{exc.strerror or exc}. Check --out-dir."
            click.echo(f"metadask: error: {msg}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("metadask: interrupted; finished pieces are kept (rerun with --resume).", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="metadask")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Train gene-grouped splice-site meta-models on Dask, out of core."""
    ctx.obj = {"debug": debug}


@main.command("make-dataset")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--genes", "n_genes", type=int, default=1000, show_default=True, help="Number of genes.")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--kmer", "kmers", type=int, multiple=True, default=(3,), show_default=True, help="k-mer size (repeatable).")
@click.option("--genes-per-file", type=int, default=100, show_default=True)
@click.option("--no-drift", is_flag=True, help="Do not add N-containing k-mer columns to some files.")
@click.option("--full-body", is_flag=True, help="Every position of each gene (shorter genes), not a sample of rows.")
@click.option("--gene-length", type=int, default=None, help="With --full-body: mean gene length in nt  [default: 3000]")
@click.option("--no-labels", is_flag=True, help="Write no label column (data to score with predict).")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset at OUT.")
@click.option("-v", "--verbose", is_flag=True)
def make_dataset_cmd(out: str, n_genes: int, seed: int, kmers: tuple[int, ...], genes_per_file: int,
                     no_drift: bool, full_body: bool, gene_length: int | None, no_labels: bool,
                     overwrite: bool, verbose: bool) -> None:
    """Write a synthetic splice-site dataset (upstream layout) to OUT."""
    from metadask.dataset.synthetic import DEFAULT_GENE_LENGTH, make_dataset

    if gene_length is not None and not full_body:
        raise ConfigError("--gene-length applies to full-body datasets only. Add --full-body or drop --gene-length.")

    setup_logging(verbose)

    def progress(done: int, total: int) -> None:
        log.info("make-dataset: file %d/%d written", done, total)

    path = make_dataset(out, n_genes, seed=seed, kmer_sizes=kmers, genes_per_file=genes_per_file,
                        n_kmer_drift=not no_drift, overwrite=overwrite, progress=progress,
                        full_body=full_body, gene_length=gene_length or DEFAULT_GENE_LENGTH,
                        labels=not no_labels)
    click.echo(f"Wrote {n_genes} {'full-body ' if full_body else ''}genes to {path}")


@main.command()
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--no-labels", is_flag=True, help="Accept a dataset without the label column (data to score).")
@click.option("--label-column", default="splice_type", show_default=True)
@click.option("--gene-column", default="gene_id", show_default=True)
@click.option("--metadata-columns", default=None, help="a,b,c: extra columns never used as features.")
@click.option("--storage-option", "storage", multiple=True, help="fsspec option key=value (repeatable).")
@click.option("-v", "--verbose", is_flag=True)
def inspect(dataset: str, as_json: bool, no_labels: bool, label_column: str, gene_column: str,
            metadata_columns: str | None, storage: tuple[str, ...], verbose: bool) -> None:
    """Summarise DATASET: genes, rows, layout (full-body or sampled), features, labels, drift, memory."""
    import dask

    from metadask.dataset import build_gene_index, format_inspection, inspect_dataset, open_dataset

    setup_logging(verbose)
    ds = open_dataset(dataset, storage_options=_storage_options(storage, dataset), label_column=label_column, gene_column=gene_column,
                      metadata_columns=_parse_list(metadata_columns), require_labels=not no_labels)
    with dask.config.set(scheduler="threads"):
        info = inspect_dataset(ds, build_gene_index(ds))
    click.echo(json.dumps(info, indent=2) if as_json else format_inspection(info))


def _cluster_options(f):
    for opt in reversed([
        click.option("--scheduler", default=None, help="Dask scheduler address (default: DASK_SCHEDULER_ADDRESS, else a local cluster)."),
        click.option("--n-workers", type=int, default=None, help="Local cluster: number of workers."),
        click.option("--threads-per-worker", type=int, default=None, help="Local cluster: threads per worker (default 1)."),
        click.option("--memory-limit", default=None, help="Local cluster: memory limit per worker (e.g. 4GB)."),
        click.option("--connect-timeout", type=float, default=None, help="Seconds to wait for a remote scheduler."),
        click.option("--min-workers", type=int, default=None, help="Wait for this many workers before starting."),
        click.option("--worker-wait-timeout", type=float, default=None, help="Seconds to wait for --min-workers."),
        click.option("--performance-report", type=click.Path(dir_okay=False), default=None, help="Write Dask's performance report (HTML) here."),
        click.option("--cluster", "cluster", type=click.Choice(["local", "kubernetes"]), default=None, help="Start a cluster of this kind (default: local unless a scheduler is given)."),
        click.option("--k8s-image", default=None, help="Kubernetes: worker image."),
        click.option("--k8s-workers", type=int, default=None, help="Kubernetes: number of workers."),
        click.option("--k8s-worker-memory", default=None, help="Kubernetes: memory per worker (e.g. 8Gi)."),
        click.option("--k8s-namespace", default=None, help="Kubernetes: namespace."),
        click.option("--storage-option", "storage", multiple=True, help="fsspec option key=value (repeatable)."),
        click.option("-v", "--verbose", is_flag=True, help="Log detail."),
    ]):
        f = opt(f)
    return f


@main.command(cls=_SectionedCommand, sections=TRAIN_SECTIONS)
@click.option("--dataset", required=True, help="Directory, <name>/master, glob or fsspec URL of parquet files.")
@click.option("--out-dir", required=True, type=click.Path(file_okay=False), help="Where artifacts and the model go.")
@_cluster_options
@click.option("--strategy", default="auto", show_default=True, help="auto|single|batch-ensemble|distributed|incremental, or a registered name.")
@click.option("--eval-dataset", default=None,
              help="Full-body dataset (every position of its genes): evaluated out of fold; the decision threshold is chosen there.")
@click.option("--weight-column", default=None,
              help="Per-row inverse inclusion probability (metadata) [default: sample_weight when present].")
@click.option("--tree-weight-power", type=float, default=0.5, show_default=True,
              help="Weighted data: rows enter the trees with weight sample_weight ** POWER (0 unweighted, 1 full).")
@click.option("--hard-negative-rounds", type=int, default=0, show_default=True,
              help="Full-body training data: rounds of adding the hardest unsampled negatives, then refitting.")
@click.option("--full-body-sampling/--no-full-body-sampling", default=True, show_default=True,
              help="A full-body training dataset is sampled by the library (weights = 1 / inclusion probability).")
@click.option("--sampling", "sampling", multiple=True, metavar="RULE=VALUE",
              help="Sampling rule for full-body training data (repeatable): hard_threshold, near_window, near_rate, easy_rate.")
@click.option("--n-folds", type=int, default=5, show_default=True)
@click.option("--n-estimators", type=int, default=800, show_default=True)
@click.option("--learning-rate", type=float, default=0.1, show_default=True)
@click.option("--max-depth", type=int, default=6, show_default=True)
@click.option("--subsample", type=float, default=0.8, show_default=True)
@click.option("--colsample-bytree", type=float, default=0.8, show_default=True)
@click.option("--max-bin", type=int, default=256, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--early-stopping-rounds", type=int, default=30, show_default=True, help="0 disables early stopping.")
@click.option("--valid-size", type=float, default=0.1, show_default=True, help="Fraction of training genes held out per fold.")
@click.option("--calibrate-per-class/--no-calibration", default=True, show_default=True)
@click.option("--calib-method", type=click.Choice(["auto", "platt", "isotonic", "stacked"]), default="auto", show_default=True,
              help="stacked: Platt on the meta and the base model's logits; auto: stacked on weighted data, else platt.")
@click.option("--final-model", type=click.Choice(["refit", "cv-ensemble"]), default="refit", show_default=True,
              help="refit: three fits on every gene; cv-ensemble: the CV fold models averaged (no refit, fewer CPU-seconds).")
@click.option("--device", default="cpu", show_default=True,
              help="XGBoost device of fits, prediction and SHAP: cpu, cuda or cuda:N (a local cluster needs dask-cuda).")
@click.option("--train-all-genes", is_flag=True, help="Force the batch ensemble (compatibility with the older tool).")
@click.option("--max-genes-per-batch", type=int, default=1200, show_default=True)
@click.option("--max-memory-gb", type=float, default=None, help="Cap on one training task's memory.")
@click.option("--ensemble-method", type=click.Choice(["voting", "weighted"]), default="weighted", show_default=True)
@click.option("--ensemble-cv", type=click.Choice(["leave-batch-out", "full"]), default="leave-batch-out", show_default=True)
@click.option("--screening-sample", type=float, default=0.1, show_default=True, help="Fraction (<= 1) or count of genes for screening.")
@click.option("--leakage-threshold", type=float, default=0.95, show_default=True)
@click.option("--leakage-auc", type=float, default=0.999, show_default=True,
              help="Exclude a feature whose gene-grouped single-feature AUC reaches this (a near copy of the label).")
@click.option("--default-exclusions/--no-default-exclusions", default=True, show_default=True,
              help="Exclude the upstream builder's annotation artifacts (has_tx_info, distance_to_start, ...).")
@click.option("--leakage-policy", type=click.Choice(["exclude", "warn"]), default="exclude", show_default=True)
@click.option("--max-missing", type=float, default=0.5, show_default=True)
@click.option("--exclude-features", default=None, help="FILE (one name per line) or a,b,c.")
@click.option("--keep-features", default=None, help="a,b,c: never excluded automatically.")
@click.option("--screening-from", default=None, type=click.Path(exists=True),
              help="Reuse an earlier run's screening: its directory or its global_excluded_features.txt.")
@click.option("--label-column", default="splice_type", show_default=True)
@click.option("--gene-column", default="gene_id", show_default=True)
@click.option("--metadata-columns", default=None, help="a,b,c: extra columns never used as features.")
@click.option("--shap-sample", type=int, default=10_000, show_default=True)
@click.option("--skip-shap", is_flag=True)
@click.option("--skip-plots", is_flag=True)
@click.option("--no-analysis", is_flag=True, help="Skip post-training analysis (metrics files are still written).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier run in --out-dir.")
@click.option("--resume", is_flag=True, help="Reuse finished folds / batches of an interrupted run in --out-dir.")
@_with_settings
def train(**kw: Any) -> None:
    """Train a meta-model with gene-aware cross-validation and write its artifacts."""
    from metadask.training import train as run_train

    setup_logging(kw.pop("verbose"))
    from metadask.cluster import CONNECT_OPTIONS

    cluster = {k: kw.pop(k) for k in CONNECT_OPTIONS if kw.get(k) is not None}
    for k in CONNECT_OPTIONS:
        kw.pop(k, None)
    kw["storage_options"] = _storage_options(kw.pop("storage"), kw["dataset"])
    kw["sampling"] = _sampling_rules(kw.pop("sampling"))
    kw["calibrate_per_class"] = kw.pop("calibrate_per_class")
    kw["analysis"] = not kw.pop("no_analysis")
    kw["exclude_features"] = kw.pop("exclude_features") or ()  # FILE or a,b,c: resolved by screening
    kw["keep_features"] = _parse_list(kw.pop("keep_features"))
    kw["metadata_columns"] = _parse_list(kw.pop("metadata_columns"))
    if kw["screening_sample"] > 1:
        kw["screening_sample"] = int(kw["screening_sample"])
    dataset, out_dir = kw.pop("dataset"), kw.pop("out_dir")
    result = run_train(dataset, out_dir, **cluster, **kw)
    click.echo(result.headline())


@main.command()
@click.option("--model", "model_path", required=True, type=click.Path(), help="A model bundle directory (O/model).")
@click.option("--dataset", required=True, help="Parquet dataset to score (directory, glob or fsspec URL); labels optional.")
@click.option("--out", required=True, type=click.Path(), help="Output directory of parquet parts (one per input file).")
@click.option("--threshold", default=None, metavar="FLOAT",
              help="Splice threshold for the call column, in (0, 1] (default: the one stored in the model).")
@click.option("--gene-column", default="gene_id", show_default=True)
@click.option("--label-column", default="splice_type", show_default=True, help="Passed through when present; not required.")
@click.option("--metadata-columns", default=None, help="a,b,c: extra non-feature columns, passed through to the output.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out (once the new predictions are complete).")
@_cluster_options
@_with_settings
def predict(model_path: str, dataset: str, out: str, threshold: str | None, gene_column: str, label_column: str,
            metadata_columns: str | None, overwrite: bool, storage: tuple[str, ...], verbose: bool, **cluster: Any) -> None:
    """Score DATASET with a trained model, out of core; write ids, probabilities, splice score and call.

    The workers write OUT as a directory of parquet parts (columns: the ids present, such as
    gene_id, position, strand, the label and base scores; prob_neither, prob_donor,
    prob_acceptor, splice_score, call). Read it with pandas.read_parquet(OUT).
    """
    from metadask.inference import predict_dataset
    from metadask.models.thresholds import check_thresholds

    setup_logging(verbose)
    value = None
    if threshold is not None:
        try:
            value = float(threshold)
        except ValueError:
            value = threshold  # not a number: check_thresholds names it
        value = check_thresholds({"splice": value})["splice"]
    cluster = {k: v for k, v in cluster.items() if v is not None}
    n = predict_dataset(model_path, dataset, out, gene_column=gene_column, label_column=label_column,
                        metadata_columns=_parse_list(metadata_columns), threshold=value, overwrite=overwrite,
                        storage_options=_storage_options(storage, dataset), **cluster)
    click.echo(f"Wrote {n:,} predictions to {out}")


@main.command()
@click.option("--model", "model_path", required=True, type=click.Path(), help="A model bundle directory (O/model).")
@click.option("--dataset", required=True, help="Labelled dataset to evaluate on (every row is scored; typically full-body).")
@click.option("--out-dir", required=True, type=click.Path(file_okay=False), help="Where metrics.json, curves.csv and plots go.")
@click.option("--threshold", type=float, default=None, help="Splice threshold to judge the meta-model at [default: the stored one].")
@click.option("--gene-column", default="gene_id", show_default=True)
@click.option("--label-column", default="splice_type", show_default=True)
@click.option("--skip-plots", is_flag=True)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out-dir.")
@_cluster_options
@_with_settings
def evaluate(model_path: str, dataset: str, out_dir: str, threshold: float | None, gene_column: str, label_column: str,
             skip_plots: bool, overwrite: bool, storage: tuple[str, ...], verbose: bool, **cluster: Any) -> None:
    """Evaluate a model on every row of held-out DATASET, base vs meta (full-body metrics)."""
    from metadask.evaluation import evaluate as run_evaluate

    setup_logging(verbose)
    cluster = {k: v for k, v in cluster.items() if v is not None}
    m = run_evaluate(model_path, dataset, out_dir, overwrite=overwrite, threshold=threshold, gene_column=gene_column,
                     label_column=label_column, storage_options=_storage_options(storage, dataset), skip_plots=skip_plots,
                     **cluster)
    b, x = m["base"], m["meta"]
    click.echo(f"Every position ({x['positions']:,.0f}): binary F1 meta {x['f1_at_threshold']:.3f} vs base "
               f"{b['f1_at_threshold']:.3f}; AP donor {x['ap_donor']:.3f} vs {b['ap_donor']:.3f}, acceptor "
               f"{x['ap_acceptor']:.3f} vs {b['ap_acceptor']:.3f}; metrics in {out_dir}/metrics.json")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
