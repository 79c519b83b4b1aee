"""``train()``: dataset -> plan -> screening -> strategy.fit -> calibration -> artifacts.

The CLI's ``metadask train`` calls this same function.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metadask.analysis.metrics import PROB_COLUMNS, RAW_COLUMNS, fold_metrics
from metadask.analysis.summary import summary_dict, write_feature_manifest, write_summary
from metadask.cluster import CONNECT_OPTIONS, connect, describe
from metadask.config import TrainConfig, setting
from metadask.dataset.index import build_gene_index
from metadask.dataset.memory import format_bytes, matrix_bytes, trim_memory
from metadask.dataset.schema import BASE_SCORE_COLUMNS, LABELS
from metadask.dataset.source import Dataset, open_dataset
from metadask.errors import ConfigError, OutputError, TrainingError
from metadask.io import write_csv, write_parquet_chunks, write_text
from metadask.journal import Journal
from metadask.models.bundle import save_model
from metadask.models.calibration import IDENTITY, combine, fit_calibrator
from metadask.plan import assign_folds, check_classes, choose_strategy, plan_folds
from metadask.results import OOF_COLUMNS, OOF_FLOAT, TrainingResult, concat_parts, fold_rows, raw_proba
from metadask.strategies.base import TrainContext, ignored_options
from metadask.strategies.capacity import apply_fit_slots, check_worker_memory, lost_to_memory, plan_inputs
from metadask.strategies.registry import get_strategy

log = logging.getLogger("metadask")

INCOMPLETE_MARKER = "RUN_INCOMPLETE"
_RUN_MARKERS = ("training_summary.txt", "model", "journal", "oof_predictions.parquet", INCOMPLETE_MARKER)


def prepare_out_dir(out_dir: str | Path, *, overwrite: bool, resume: bool) -> Path:
    """Create ``out_dir``; refuse one holding an earlier run unless --overwrite / --resume."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out-dir '{out}' is a file. Choose a directory.")
    previous = out.is_dir() and any((out / m).exists() for m in _RUN_MARKERS)
    if previous and not (overwrite or resume):
        raise OutputError(
            f"'{out}' already holds a training run. Pass --overwrite to replace it, --resume to continue it, "
            "or choose another --out-dir."
        )
    if resume and not (out / "journal").is_dir():
        log.info("--resume: no journal in %s; starting from scratch", out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite and (out / "journal").is_dir():
            shutil.rmtree(out / "journal")
        write_text(out / INCOMPLETE_MARKER, "This run has not finished; its files may be from an earlier run.\n"
                   "Rerun with --resume to continue it.\n")
    except PermissionError:
        raise OutputError(f"Permission denied creating '{out}'. Choose a writable --out-dir.") from None
    return out


CALIBRATION_FIT_ROWS = 1_000_000
"""Calibrators are fitted on at most about this many out-of-fold rows (see :func:`calibration_keep`)."""
APPLY_CHUNK_ROWS = 250_000
"""Rows calibrated at a time in a part: a worker's working arrays stay this size."""


def calibration_keep(counts: np.ndarray, cap: int = CALIBRATION_FIT_ROWS) -> np.ndarray | None:
    """Per class, the probability that an out-of-fold row is drawn for the calibrators' fit.

    None (every row: exactly the fit on all rows) when there are at most ``cap`` rows. Above,
    about ``cap`` rows stratified by label: each class gets an equal share of ``cap`` (a class
    with fewer rows keeps them all and leaves the rest to the others), each row of a class kept
    with probability share / rows of the class. The draw (:func:`draw_calibration_rows`) runs
    part by part on the workers; :func:`calibration_weights` then weights each kept row by its
    class's rows / kept rows, so the weighted sample stands for every row and every class
    weighs exactly what it does in the data.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() <= cap:
        return None
    quota = np.zeros(len(counts), dtype=np.int64)
    left, open_ = cap, [k for k in range(len(counts)) if counts[k]]
    while open_:  # water-filling: equal shares, small classes keep all their rows
        share = left // len(open_)
        small = [k for k in open_ if counts[k] <= share]
        if not small:
            for k in open_:
                quota[k] = share
            break
        for k in small:
            quota[k] = counts[k]
            left -= counts[k]
            open_.remove(k)
    return np.divide(quota, counts, out=np.zeros(len(counts)), where=counts > 0)


def label_counts(part: pd.DataFrame) -> np.ndarray:
    """Rows per class of an out-of-fold part."""
    return np.bincount(part["label"].to_numpy(), minlength=len(LABELS))


def draw_calibration_rows(part: pd.DataFrame, i: int, keep: np.ndarray | None, seed: int,
                          columns: list[str]) -> pd.DataFrame:
    """Part ``i``'s rows drawn for the calibrators' fit (each row of class k with probability ``keep[k]``; every row when None)."""
    cols = [c for c in columns if c in part]
    if keep is None:
        return part[cols]
    y = part["label"].to_numpy()
    rng = np.random.default_rng([seed, i])
    return part[cols].iloc[np.flatnonzero(rng.random(len(y)) < keep[y])]


def calibration_weights(y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each drawn row's factor: its class's rows / the class's drawn rows (the weighted draw stands for every row)."""
    kept = np.bincount(y, minlength=len(counts))
    factor = np.divide(np.asarray(counts, dtype=np.float64), kept, out=np.zeros(len(counts)), where=kept > 0)
    return factor[y]


def calibrated_part(part: pd.DataFrame, calibrators: dict[int, list[Any] | None]) -> pd.DataFrame:
    """``part`` with ``prob_*`` (float32): its fold's rows calibrated by ``calibrators[fold]``
    (None: the uncalibrated one-vs-rest probabilities, normalised), a chunk at a time. Runs on a worker."""
    prob = [np.empty(len(part), dtype=OOF_FLOAT) for _ in LABELS]
    base_cols = [part[c].to_numpy() for c in BASE_SCORE_COLUMNS]
    for f, rows in fold_rows(part):
        cals = calibrators[f]
        for start in range(0, len(rows), APPLY_CHUNK_ROWS):
            chunk = rows[start:start + APPLY_CHUNK_ROWS]
            raw = raw_proba(part, chunk)
            if cals is not None:
                for k, c in enumerate(cals):
                    raw[:, k] = c(raw[:, k], base_cols[k][chunk].astype(np.float64)) if c.base_column else c(raw[:, k])
            p = combine(raw)
            for k in range(len(LABELS)):
                prob[k][chunk] = p[:, k]
    out = part.drop(columns=[c for c in PROB_COLUMNS if c in part])
    for k, c in enumerate(PROB_COLUMNS):
        out[c] = prob[k]
    return out


def set_probabilities(result: TrainingResult, calibrators: dict[int, list[Any] | None]) -> None:
    """Calibrate every out-of-fold row where it is: fold ``f``'s rows by ``calibrators[f]`` (:func:`calibrated_part`)."""
    parts = result.oof_parts
    columns = [*(c for c in parts.columns if c not in PROB_COLUMNS), *PROB_COLUMNS]
    parts.transform(calibrated_part, calibrators, columns=columns, what="calibrating the out-of-fold predictions")


def calibrate(result: TrainingResult, config: TrainConfig) -> None:
    """Per-class calibration, honest: cross-fitted on out-of-fold predictions.

    Each fold's rows are calibrated by calibrators fit on the other folds' out-of-fold
    predictions (folds grouped into at most :data:`CALIBRATION_GROUPS` groups, see
    :func:`calibration_groups`); the final model's calibrators are fit on all of them. Above
    :data:`CALIBRATION_FIT_ROWS` rows the fits use a weighted, label-stratified sample drawn on
    the workers (:func:`calibration_keep`); every row is still calibrated, on the workers.
    """
    parts = result.oof_parts
    if not config.calibrate_per_class:
        set_probabilities(result, {f: None for f in parts.fold_ids})
        result.model.calibrators = [IDENTITY] * len(LABELS)
        return
    t0 = time.perf_counter()
    weighted = "weight" in parts
    method = calibration_method(config.calib_method, weighted=weighted, features=result.model.features)
    counts = np.sum(parts.map_parts(label_counts, what="the out-of-fold class counts"), axis=0)
    keep = calibration_keep(counts, CALIBRATION_FIT_ROWS)
    columns = ["label", "fold", *BASE_SCORE_COLUMNS, *(f"margin_{c}" for c in LABELS), "weight"]
    drawn = parts.map_parts(draw_calibration_rows, keep, config.seed, columns, what="the calibration sample", indexed=True)
    sample = concat_parts(drawn)
    del drawn
    raw = raw_proba(sample)
    y = sample["label"].to_numpy()
    w = sample["weight"].to_numpy(dtype=np.float64) if weighted else None
    if keep is not None:
        factor = calibration_weights(y, counts)
        w = factor if w is None else w * factor
    base = np.column_stack([sample[c].to_numpy(dtype=np.float64) for c in BASE_SCORE_COLUMNS])

    def fit(k: int, inside: np.ndarray | slice) -> Any:
        if method == "stacked" and BASE_SCORE_COLUMNS[k] in result.model.features:
            return fit_calibrator(raw[inside, k], y[inside] == k, method, None if w is None else w[inside], base=base[inside, k],
                                  base_column=BASE_SCORE_COLUMNS[k])
        return fit_calibrator(raw[inside, k], y[inside] == k, "platt" if method == "stacked" else method,
                              None if w is None else w[inside])

    fold_ids = np.array(parts.fold_ids)
    group_of = calibration_groups(fold_ids)  # fold_ids[i] is in group group_of[i]
    sample_groups = group_of[np.searchsorted(fold_ids, sample["fold"].to_numpy())]
    by_group = {int(g): [fit(k, sample_groups != g) for k in range(len(LABELS))] for g in np.unique(group_of)}
    for f, g in zip(fold_ids.tolist(), group_of.tolist()):
        result.fold_calibrators[int(f)] = by_group[int(g)]
    set_probabilities(result, dict(result.fold_calibrators))
    result.model.calibrators = [fit(k, slice(None)) for k in range(len(LABELS))]
    result.details["calibration_method"] = method
    n_sample = len(sample)
    del raw, base, sample
    trim_memory()
    sampled = "" if keep is None else f", fitted on a label-stratified weighted sample of {n_sample:,}"
    log.info("Calibration: %s per class%s, cross-fitted over %d groups of folds, %s rows%s%s (%.1f s)", method,
             " (Platt on the meta and the base model's logits)" if method == "stacked" else "",
             len(by_group), f"{len(parts):,}", sampled,
             ", weighted by inverse inclusion probability (probabilities refer to every position)" if weighted else "",
             time.perf_counter() - t0)


def calibration_method(requested: str, *, weighted: bool, features: list[str]) -> str:
    """``auto``: ``stacked`` on weighted rows (they stand for every position) when the base scores are
    features, else ``platt``. ``stacked`` without the base scores among the features falls back to ``platt``
    (a class whose own base score is not a feature, e.g. ``neither_score`` screened out, is calibrated by Platt)."""
    has_base = all(c in features for c in BASE_SCORE_COLUMNS[1:])
    if requested == "auto":
        return "stacked" if weighted and has_base else "platt"
    if requested == "stacked" and not has_base:
        log.warning("--calib-method stacked needs the base scores %s among the features; using platt.",
                    ", ".join(BASE_SCORE_COLUMNS[1:]))
        return "platt"
    return requested


CALIBRATION_GROUPS = 5


def calibration_groups(folds: np.ndarray, n_groups: int = CALIBRATION_GROUPS) -> np.ndarray:
    """Cross-fitting groups for calibration: each fold its own group, up to ``n_groups``.

    With more folds (a batch ensemble's leave-batch-out CV has one per batch: 64 on a
    4,400-gene run), folds are dealt round-robin into ``n_groups`` groups, so calibration
    costs ``n_groups + 1`` fits per class instead of one per fold. Every row is still
    calibrated by calibrators fit on other folds' rows only.
    """
    return np.unique(folds, return_inverse=True)[1] % n_groups


def _screen(dataset: Dataset, index, config: TrainConfig, client, out: Path):
    from metadask.screening import screen_features

    t0 = time.perf_counter()
    screening = screen_features(dataset, index, config, client=client)
    screening.write(out)
    log.info("Screening: %d features used, %d excluded (%.1f s)", len(screening.features), len(screening.excluded),
             time.perf_counter() - t0)
    return screening


def train(
    dataset: str | Path | Dataset,
    out_dir: str | Path,
    *,
    client: Any = None,
    **options: Any,
) -> TrainingResult:
    """Train a gene-grouped meta-model on Dask and write every artifact to ``out_dir``.

    Parameters
    ----------
    dataset
        Directory, ``<name>/master``, glob or fsspec URL of parquet files (or an opened
        :class:`~metadask.dataset.Dataset`).
    out_dir
        Output directory; must not hold an earlier run unless ``overwrite`` or ``resume``.
    client
        A Dask client to use; by default one is resolved by :func:`metadask.cluster.connect`
        (``scheduler``, ``DASK_SCHEDULER_ADDRESS``, ``cluster="kubernetes"``, an active client,
        else a local cluster sized to the machine, shut down afterwards).
    **options
        Any :class:`~metadask.config.TrainConfig` field (``n_folds``, ``n_estimators``, ...)
        and any connection option of :func:`metadask.cluster.connect` (``scheduler``,
        ``n_workers``, ``threads_per_worker``, ``memory_limit``, ``connect_timeout``,
        ``min_workers``, ``performance_report``, ``cluster``, ``k8s_*``).

    Returns
    -------
    TrainingResult
        The final model, out-of-fold predictions, per-fold metrics and run details.
    """
    cluster_options = {k: options.pop(k) for k in CONNECT_OPTIONS if k in options}
    config = TrainConfig.from_options(**options)
    if config.exclude_features:
        from metadask.screening import parse_exclude_option

        parse_exclude_option(config.exclude_features)  # a missing exclusion file fails before any work
    if config.strategy != "auto":
        get_strategy(config.strategy)  # an unknown name fails (listing the known ones) before any work
    sampling_rules(config)  # bad --sampling rules fail before any work
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    ds = open_dataset(dataset, storage_options=config.storage_options, label_column=config.label_column,
                      gene_column=config.gene_column, metadata_columns=config.metadata_columns,
                      weight_column=config.weight_column)
    eval_ds = None
    if config.eval_dataset:
        eval_ds = open_dataset(config.eval_dataset, storage_options=config.storage_options, label_column=config.label_column,
                               gene_column=config.gene_column, metadata_columns=config.metadata_columns)
    out = prepare_out_dir(out_dir, overwrite=config.overwrite, resume=config.resume)
    with connect(client=client, device=config.device, **cluster_options) as c, c.as_current():
        spec = describe(c)
        if spec.dashboard:
            log.info("Dask dashboard: %s", spec.dashboard)
        log.info("Cluster: %d workers, threads %s, memory limit %s per worker", spec.n_workers,
                 "/".join(map(str, sorted(set(spec.threads)))), format_bytes(spec.min_memory))
        check_worker_memory(c)  # a worker too small to start would pause and leave every task waiting
        t = time.perf_counter()
        index = build_gene_index(ds, cache=out / "cache" / "gene_index.parquet")
        full: tuple[Dataset, Any] | None = None
        if index.is_full_body and config.full_body_sampling:
            full = (ds, index)
            ds = sample_full_body(ds, index, config, c, out)
            index = build_gene_index(ds, cache=out / "cache" / "sampled_gene_index.parquet")
        timings["gene_index"] = time.perf_counter() - t
        log.info("Dataset %s: %d genes, %s rows, %d files, %d candidate features", ds.url, index.n_genes,
                 f"{index.n_rows:,}", len(ds.files), len(ds.schema.feature_columns))
        check_classes(index, index.genes, "the training data")
        if config.hard_negative_rounds and full is None:
            raise ConfigError("--hard-negative-rounds needs a full-body training dataset (every position of each gene, "
                              "see `metadask inspect`): it mines the negatives the library's sample left out.")

        t = time.perf_counter()
        screening = _screen(ds, index, config, c, out)
        timings["screening"] = time.perf_counter() - t
        features = list(screening.features)
        if not features:
            raise TrainingError("Screening excluded every feature. Relax --leakage-threshold / --max-missing or use --keep-features.")
        if eval_ds is not None:
            from metadask.analysis.full_body import check_eval_dataset

            check_eval_dataset(eval_ds, features)  # before training: a bad --eval-dataset fails now

        result, ctx = _fit_round(ds, index, features, dict(screening.excluded), config, c, spec, Journal(out / "journal", config.resume),
                                 timings, "training")
        for r in range(1, config.hard_negative_rounds + 1):
            ds, index = _mine(full, ds, index, result, config, c, out, r)
            result.oof_parts.release()  # the next round predicts every row again
            result, ctx = _fit_round(ds, index, features, dict(screening.excluded), config, c, spec,
                                     Journal(out / "journal" / f"round{r}", config.resume), timings, f"training_round{r}")
        result.out_dir = str(out)
        result.timings = timings

        t = time.perf_counter()
        artifacts = full_body_evaluation(result, full or (ds, index), eval_ds, config, c, out)
        timings["full_body_evaluation"] = time.perf_counter() - t
        result.fold_metrics = _with_fit_columns(fold_metrics(result.oof_parts), result)  # after any recalibration
        t = time.perf_counter()
        artifacts += _write_core_artifacts(out, result, ds, config)
        notes: list[str] = []
        if config.analysis:
            from metadask.analysis.run import run_analysis

            artifacts += run_analysis(result, ctx, out, notes, _screening_lines(screening))
        else:
            notes.append("Analysis skipped (--no-analysis): no plots, SHAP, importance or overfitting artifacts.")
        timings["analysis"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start
        meta = {
            "date": _dt.datetime.now().isoformat(timespec="seconds"), "dataset": ds.url, "genes": index.n_genes,
            "rows": index.n_rows, "parameters": config.to_dict(), "strategy_label": result.details["strategy_label"],
            "artifacts": sorted({*artifacts, "training_summary.txt", "training_summary.json"}), "notes": notes,
        }
        result.summary = summary_dict(result, meta)
        write_summary(out, result.summary, _screening_lines(screening))
        result.oof_parts.release(file=out / "oof_predictions.parquet")  # result.oof reads the file from now on
    with contextlib.suppress(FileNotFoundError):
        (out / INCOMPLETE_MARKER).unlink()
    log.info(result.headline())
    return result


def _fit_round(ds: Dataset, index, features: list[str], excluded: dict[str, str], config: TrainConfig, c, spec,
               journal: Journal, timings: dict[str, float], timing_key: str) -> tuple[TrainingResult, TrainContext]:
    """Plan, fit and calibrate once on ``ds`` (each hard-negative mining round calls it again)."""
    folds = assign_folds(index, config.n_folds, config.seed)
    fold_plans = plan_folds(index, folds, valid_size=config.valid_size, seed=config.seed)
    choice = choose_strategy(
        config.strategy, index=index, n_features=len(features), worker_memory=spec.min_memory,
        memory_fraction=float(setting("task-memory-fraction")), max_memory_gb=config.max_memory_gb,
        max_genes_per_batch=config.max_genes_per_batch, train_all_genes=config.train_all_genes,
        max_bin=config.max_bin, **plan_inputs(c),
    )
    strategy_cls = get_strategy(choice.name)
    log.info("Strategy: %s (%s)", choice.name, choice.reason)
    if choice.warning:
        log.warning(choice.warning)
    ignored = ignored_options(config, strategy_cls)
    if ignored:  # never drop a user's option silently
        log.warning("%s: not used by the %s strategy; ignored.", ", ".join(ignored), choice.name)
    if choice.concurrency:
        log.info("Concurrency: %s", choice.concurrency)
    else:
        log.info("XGBoost nthread follows each worker's threads (%s)", "/".join(map(str, sorted(set(spec.threads)))))
    ctx = TrainContext(
        client=c, dataset=ds, index=index, config=config, features=features, excluded=dict(excluded),
        folds=folds, fold_plans=fold_plans, cluster=spec, journal=journal,
        plan={"choice": choice, "matrix_bytes": matrix_bytes(index, len(features)),
              "resources": apply_fit_slots(c, choice)},
    )
    strategy = strategy_cls(config)
    if ds.weighted and config.tree_weight_power > 0 and not strategy_cls.supports_row_weights:
        log.warning("Strategy '%s' fits unweighted trees: the rows' inclusion weights are used for calibration and "
                    "thresholds only (--tree-weight-power applies to single and batch-ensemble).", choice.name)
    elif ds.weighted:
        log.info("Rows carry inclusion weights (%s): trees weighted by weight ** %g, calibration by the full weights",
                 ds.weight_column, config.tree_weight_power)
    t = time.perf_counter()
    with lost_to_memory(ctx):
        result = strategy.fit(ctx)
    timings[timing_key] = time.perf_counter() - t
    if ctx.journal is not None and ctx.journal.reused:
        log.info("--resume reused %d finished fits: %s", len(ctx.journal.reused), ", ".join(ctx.journal.reused))
    result.reason = choice.reason
    result.details.setdefault("strategy_label", strategy.describe(ctx))
    _check_oof(result, index.n_rows)
    calibrate(result, config)
    return result, ctx


def _mine(full, ds: Dataset, index, result: TrainingResult, config: TrainConfig, client, out: Path,
          round_: int) -> tuple[Dataset, Any]:
    """One hard-negative mining round: the next sample (``out/sampled_round{r}``) and its index."""
    from metadask.mining import MiningRules, mine_round

    target = out / f"sampled_round{round_}"
    mine_round(full[0], full[1], ds, index, result.model, target, sampling=sampling_rules(config), seed=config.seed,
               rules=MiningRules(**dict(config.mining)), round_=round_, client=client)
    mined = open_dataset(target, storage_options={}, label_column=config.label_column, gene_column=config.gene_column,
                         metadata_columns=config.metadata_columns)
    return mined, build_gene_index(mined, cache=out / "cache" / f"sampled_round{round_}_gene_index.parquet")


def sample_full_body(ds: Dataset, index, config: TrainConfig, client, out: Path) -> Dataset:
    """Sample a full-body training dataset on the workers (``out/sampled``); open the sample.

    Every site, every negative with a base score >= the hard threshold, a fraction of the
    negatives near sites and of the rest (:class:`~metadask.dataset.sampling.SamplingRules`,
    overridable with ``--sampling KEY=VALUE``), each kept row weighted by 1 / its inclusion
    probability. ``--resume`` reuses a finished sample made with the same rules and seed.
    """
    import json

    from metadask.dataset.sampling import SamplingRules, write_sampled_dataset

    rules = sampling_rules(config)
    target = out / "sampled"
    info_file = target / "sampling.json"
    if config.resume and info_file.is_file():
        info = json.loads(info_file.read_text())
        if info.get("rules") == rules.to_dict() and info.get("seed") == config.seed and info.get("source") == ds.url:
            log.info("--resume: reusing the sample of the full bodies in %s", target)
            return open_dataset(target, storage_options={}, label_column=config.label_column,
                                gene_column=config.gene_column, metadata_columns=config.metadata_columns)
    log.info("Dataset %s is full-body (%s positions of %d genes): sampling negatives on the workers (%s; seed %d), "
             "weights = 1 / inclusion probability", ds.url, f"{index.n_rows:,}", index.n_genes,
             ", ".join(f"{k}={v}" for k, v in rules.to_dict().items() if k != "score_columns"), config.seed)
    write_sampled_dataset(ds, target, rules, config.seed, client=client, index=index, overwrite=True)
    return open_dataset(target, storage_options={}, label_column=config.label_column, gene_column=config.gene_column,
                        metadata_columns=config.metadata_columns)


def sampling_rules(config: TrainConfig):
    """The :class:`~metadask.dataset.sampling.SamplingRules` of ``config.sampling`` (validated)."""
    from metadask.dataset.sampling import SamplingRules
    from metadask.errors import option_error

    known = {"hard_threshold", "near_window", "near_rate", "easy_rate"}
    unknown = sorted(set(config.sampling) - known)
    if unknown:
        raise option_error("sampling", f"has no rule '{unknown[0]}'", unknown[0], f"Known rules: {', '.join(sorted(known))}.")
    return SamplingRules(**dict(config.sampling)).validate()


def full_body_evaluation(result: TrainingResult, full: tuple[Dataset, Any], eval_ds: Dataset | None,
                         config: TrainConfig, client, out: Path) -> list[str]:
    """Evaluate on every position and choose the decision threshold there; set it on the model.

    Where the scores come from, in order: ``--eval-dataset`` (every position of its genes,
    training genes scored by their fold's model); the training dataset itself when it is
    full-body; weighted out-of-fold rows of a sampled dataset that records inclusion
    weights. Otherwise there is no estimate of the full-body distribution: the default 0.5
    threshold stays and the summary says so.
    """
    from metadask.analysis import full_body as fb

    ds, index = full
    if eval_ds is None and index.is_full_body:
        eval_ds, eval_index = ds, index
    elif eval_ds is not None:
        eval_index = build_gene_index(eval_ds, cache=out / "cache" / "eval_gene_index.parquet")
    if eval_ds is not None:
        source = f"every position of {eval_index.n_genes} genes of {eval_ds.url}, out of fold"
        if recalibrate_on_full_body(result, config):
            # unweighted sampled training rows do not stand for every position: fit the (stacked)
            # calibrators on a weighted sample of the full-body out-of-fold scores instead, then score again
            _, _, sample = fb.evaluate_training_run(result, eval_ds, eval_index, client, source=source,
                                                    calibration_rows=FULL_BODY_CALIBRATION_ROWS)
            calibrate_on_full_body(result, sample, config)
        by_fold, metrics = fb.evaluate_training_run(result, eval_ds, eval_index, client, source=source)
    elif "weight" in result.oof_parts:
        source = "weighted out-of-fold sampled rows (inverse inclusion probabilities): an estimate of every position"
        by_fold = fb.weighted_oof_stats(result.oof_parts)
        metrics = fb.full_body_metrics(by_fold, source=source)
    else:
        result.details["thresholds_note"] = (
            "Decision threshold 0.5 (default): the training data is sampled and unweighted, so no full-body "
            "out-of-fold scores were available to choose it. Pass --eval-dataset FULLBODY (or train on weighted or "
            "full-body data).")
        log.warning(result.details["thresholds_note"])
        return []
    chosen = metrics["thresholds"]["meta_stored"]
    result.model.thresholds = {"splice": chosen, "source": source, "f1_out_of_fold": metrics["meta"]["f1_at_threshold"],
                               "positions": metrics["meta"]["positions"]}
    result.details["full_body"] = metrics
    log.info("Full-body evaluation (%s): binary F1 meta %.3f at threshold %.3f (base %.3f at its own), AP donor %.3f vs "
             "%.3f, acceptor %.3f vs %.3f, false positives per 10 kb %.2f vs %.2f", source, metrics["meta"]["f1_at_threshold"],
             chosen, metrics["base"]["f1_at_threshold"], metrics["meta"]["ap_donor"], metrics["base"]["ap_donor"],
             metrics["meta"]["ap_acceptor"], metrics["base"]["ap_acceptor"], metrics["meta"]["fp_per_10kb"],
             metrics["base"]["fp_per_10kb"])
    files = fb.write_full_body(out / fb.FULL_BODY_DIR, by_fold, metrics,
                               skip_plots=config.skip_plots or not config.analysis)
    return [f"{fb.FULL_BODY_DIR}/{f}" for f in files]


FULL_BODY_CALIBRATION_ROWS = 2000
"""Per evaluation task, at most about this many hard and this many easy negatives (plus every site) are
sampled, weighted, for calibrators fitted on the full-body distribution."""


def recalibrate_on_full_body(result: TrainingResult, config: TrainConfig) -> bool:
    """Whether the calibrators are refitted on full-body out-of-fold scores: unweighted training rows,
    ``--calib-method auto`` and per-class calibration on."""
    return config.calibrate_per_class and config.calib_method == "auto" and "weight" not in result.oof_parts


def calibrate_on_full_body(result: TrainingResult, sample: pd.DataFrame, config: TrainConfig) -> None:
    """Refit the calibrators on a weighted sample of full-body positions scored out of fold.

    The calibrators of fold ``f`` are fitted on the sample rows of the other folds' genes (cross-fitted);
    the final model's on the rows of every training fold. The out-of-fold sampled rows' ``prob_*``
    are recomputed with their fold's new calibrators, so every artifact uses the deployed calibration.
    """
    method = calibration_method("auto", weighted=True, features=result.model.features)
    raw = sample[[f"raw_{c}" for c in LABELS]].to_numpy()
    base = sample[list(BASE_SCORE_COLUMNS)].to_numpy(dtype=np.float64)
    y, w, folds = sample["label"].to_numpy(), sample["weight"].to_numpy(), sample["fold"].to_numpy()

    def fit(rows: np.ndarray) -> list[Any]:
        out = []
        for k in range(len(LABELS)):
            if method == "stacked" and BASE_SCORE_COLUMNS[k] in result.model.features:
                out.append(fit_calibrator(raw[rows, k], y[rows] == k, "stacked", w[rows], base=base[rows, k],
                                          base_column=BASE_SCORE_COLUMNS[k]))
            else:
                out.append(fit_calibrator(raw[rows, k], y[rows] == k, "platt", w[rows]))
        return out

    trained = folds >= 0
    for f in result.fold_calibrators or {f: None for f in result.oof_parts.fold_ids}:
        result.fold_calibrators[f] = fit(folds != f)
    result.model.calibrators = fit(trained if trained.any() else np.ones(len(folds), bool))
    set_probabilities(result, {f: result.fold_calibrators.get(f, result.model.calibrators) for f in result.oof_parts.fold_ids})
    result.details["calibration_method"] = f"{method} on full-body positions"
    log.info("Calibration refitted on full-body out-of-fold scores: %s per class, %s sampled positions standing for "
             "%s (cross-fitted over %d folds)", method, f"{len(sample):,}", f"{w.sum():,.0f}", len(result.fold_calibrators))


def _screening_lines(screening) -> list[str]:
    from metadask.screening import summary_lines

    return summary_lines(screening)


def _check_oof(result: TrainingResult, n_rows: int) -> None:
    parts = result.oof_parts
    missing = [c for c in ("gene", "label", "fold", *(f"margin_{c}" for c in LABELS)) if c not in parts]
    if missing:
        raise TrainingError(f"Strategy '{result.strategy}' returned out-of-fold predictions without {missing}.")
    if len(parts) != n_rows:
        raise TrainingError(f"Strategy '{result.strategy}' predicted {len(parts)} of {n_rows} rows out of fold.")


def _with_fit_columns(fm: pd.DataFrame, result: TrainingResult) -> pd.DataFrame:
    fits = result.fits
    cv = fits[fits["scope"] == "cv"] if "scope" in fits else fits.iloc[0:0]
    for c in LABELS:
        part = cv[cv["cls"] == c].set_index("fold")["best_iteration"] if len(cv) else pd.Series(dtype=float)
        fm[f"best_iteration_{c}"] = fm["fold"].map(part)
    if len(cv):
        fm["seconds"] = fm["fold"].map(cv.groupby("fold")["seconds"].sum()).round(2)
    return fm


def _write_core_artifacts(out: Path, result: TrainingResult, ds: Dataset, config: TrainConfig) -> list[str]:
    parts = result.oof_parts
    cols = [c for c in OOF_COLUMNS if c in parts or c in RAW_COLUMNS] + [c for c in parts.columns if c.startswith("margin_")]
    write_parquet_chunks(out / "oof_predictions.parquet", parts.tables(cols, APPLY_CHUNK_ROWS))
    write_csv(out / "gene_cv_metrics.csv", result.fold_metrics)
    write_feature_manifest(out, result, list(ds.schema.feature_columns))
    save_model(result.model, out / "model", strategy=result.strategy, extra={
        "training": config.to_dict(), "dataset": ds.url, "genes": int(result.folds.size),
        "excluded_features": result.excluded, "strategy_reason": result.reason,
    })
    return ["model/ - Trained meta-model bundle (load with metadask.load_model)", "oof_predictions.parquet",
            "gene_cv_metrics.csv", "feature_manifest.csv", "global_excluded_features.txt",
            "screening/feature_screening.csv"]
