"""Every training option in one place, validated once.

:class:`TrainConfig` is what ``metadask train`` and :func:`metadask.train` build from their
arguments. Defaults for cluster-level settings live in ``metadask.yaml``, registered with
``dask.config`` (override with ``DASK_METADASK__...`` environment variables or
``dask.config.set({"metadask.<key>": ...})``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dask.config
import yaml

from metadask.errors import ConfigError, option_error

_DEFAULTS_FILE = Path(__file__).with_name("metadask.yaml")
with open(_DEFAULTS_FILE) as _fh:
    DEFAULTS: dict[str, Any] = yaml.safe_load(_fh)["metadask"]
    """The ``metadask.*`` settings' defaults: metadask.yaml is their only source."""
dask.config.update_defaults({"metadask": DEFAULTS})

StrategyName = Literal["auto", "single", "batch-ensemble", "distributed", "incremental"]


_MISSING = object()


def setting(key: str) -> Any:
    """A ``metadask.<key>`` value from dask.config (defaults from metadask.yaml).

    Falls back to the metadask.yaml default when dask.config lost it (metadask first imported
    inside a ``dask.config.set`` block, whose exit restores the config of before the import).
    """
    value = dask.config.get(f"metadask.{key}", _MISSING)
    return _default(key) if value is _MISSING else value


def _default(key: str) -> Any:
    value: Any = DEFAULTS
    for part in key.split("."):
        value = value[part]
    return value


def setting_changed(key: str) -> bool:
    """Whether ``metadask.<key>`` (a value or a section) differs from its metadask.yaml default."""
    return setting(key) != _default(key)


def setting_keys() -> list[str]:
    """Every ``metadask.*`` setting as a dotted key (``incremental.epochs``, ``worker-env``, ...)."""
    def walk(prefix: str, node: Any) -> list[str]:
        if isinstance(node, dict) and prefix != "worker-env":
            return [k for name, sub in node.items() for k in walk(f"{prefix}.{name}" if prefix else name, sub)]
        return [prefix]

    return walk("", DEFAULTS)


def parse_settings(items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (``--set``) as ``dask.config`` settings ``{"metadask.KEY": value}``.

    Keys are those of metadask.yaml (``incremental.epochs``, ``distributed.worker-wait``,
    ``ensemble-cv-members``, ``worker-env.NAME``, ...), with or without the ``metadask.``
    prefix; values are read as YAML (``3``, ``0.5``, ``true``, ``null``, text).
    """
    known = setting_keys()
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key = key.strip().removeprefix("metadask.").replace("_", "-")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (found {item!r}). Use e.g. --set incremental.epochs=5.")
        if key not in known and not key.startswith("worker-env."):
            raise ConfigError(f"--set {key}: no such setting. Known settings: {', '.join(known)} "
                              "(and worker-env.NAME for a worker environment variable).")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if key.startswith("worker-env."):
            value = "" if value is None else str(raw.strip())
        out[f"metadask.{key}"] = value
    return out


@dataclass
class TrainConfig:
    """Options of one training run. Keyword-only; call :meth:`validate` before use."""

    # data
    label_column: str = "splice_type"
    gene_column: str = "gene_id"
    metadata_columns: tuple[str, ...] = ()
    storage_options: dict[str, Any] = field(default_factory=dict)
    weight_column: str | None = None
    # full-body evaluation: every position of each gene of this dataset, scored out of fold
    eval_dataset: str | None = None
    # a full-body training dataset is sampled by the library (rules: metadask.dataset.sampling)
    full_body_sampling: bool = True
    sampling: dict[str, Any] = field(default_factory=dict)
    # rows of a weighted dataset enter the trees with weight sample_weight ** tree_weight_power
    tree_weight_power: float = 0.5
    # hard-negative mining rounds on full-body training data (rules: metadask.mining.MiningRules)
    hard_negative_rounds: int = 0
    mining: dict[str, Any] = field(default_factory=dict)
    # model
    n_folds: int = 5
    n_estimators: int = 800
    learning_rate: float = 0.1
    max_depth: int = 6
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    max_bin: int = 256
    min_child_weight: float = 1.0
    seed: int = 42
    early_stopping_rounds: int = 30
    valid_size: float = 0.1
    calibrate_per_class: bool = True
    calib_method: Literal["auto", "platt", "isotonic", "stacked"] = "auto"
    # the final model: refit on every gene, or the CV fold models averaged (no refit)
    final_model: Literal["refit", "cv-ensemble"] = "refit"
    # XGBoost device of fits, prediction and SHAP: "cpu", "cuda" or "cuda:<ordinal>"
    device: str = "cpu"
    # strategy
    strategy: str = "auto"
    train_all_genes: bool = False
    max_genes_per_batch: int = 1200
    max_memory_gb: float | None = None
    ensemble_method: Literal["voting", "weighted"] = "weighted"
    ensemble_cv: Literal["leave-batch-out", "full"] = "leave-batch-out"
    # screening
    screening_sample: float = 0.1
    leakage_threshold: float = 0.95
    leakage_auc: float = 0.999
    default_exclusions: bool = True
    leakage_policy: Literal["exclude", "warn"] = "exclude"
    max_missing: float = 0.5
    exclude_features: tuple[str, ...] = ()
    keep_features: tuple[str, ...] = ()
    screening_from: str | None = None
    # analysis
    analysis: bool = True
    shap_sample: int = 10_000
    skip_shap: bool = False
    skip_plots: bool = False
    # run
    overwrite: bool = False
    resume: bool = False
    verbose: bool = False

    def validate(self) -> TrainConfig:
        """Check every option; raise :class:`~metadask.errors.ConfigError` naming the first bad one."""
        def need(ok: bool, name: str, constraint: str, fix: str) -> None:
            if not ok:
                raise option_error(name, constraint, getattr(self, name), fix)

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        need(is_int(self.n_folds) and self.n_folds >= 2, "n_folds", "must be an integer >= 2", "Use --n-folds 2 or more (default 5).")
        need(is_int(self.n_estimators) and self.n_estimators >= 1, "n_estimators", "must be an integer >= 1", "Use e.g. --n-estimators 800.")
        need(isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate <= 1, "learning_rate", "must be in (0, 1]", "Use e.g. --learning-rate 0.1.")
        need(is_int(self.max_depth) and 1 <= self.max_depth <= 32, "max_depth", "must be an integer in 1..32", "Use e.g. --max-depth 6.")
        need(isinstance(self.subsample, (int, float)) and 0 < self.subsample <= 1, "subsample", "must be in (0, 1]", "Use e.g. --subsample 0.8.")
        need(isinstance(self.colsample_bytree, (int, float)) and 0 < self.colsample_bytree <= 1, "colsample_bytree", "must be in (0, 1]", "Use e.g. --colsample-bytree 0.8.")
        need(is_int(self.max_bin) and 2 <= self.max_bin <= 1024, "max_bin", "must be an integer in 2..1024", "Use e.g. --max-bin 256.")
        need(is_int(self.seed) and self.seed >= 0, "seed", "must be a non-negative integer", "Use e.g. --seed 42.")
        need(is_int(self.early_stopping_rounds) and self.early_stopping_rounds >= 0, "early_stopping_rounds", "must be an integer >= 0", "Use 0 to disable early stopping.")
        need(isinstance(self.valid_size, (int, float)) and 0 < self.valid_size < 0.5, "valid_size", "must be a fraction in (0, 0.5)", "Use e.g. --valid-size 0.1.")
        need(self.calib_method in ("auto", "platt", "isotonic", "stacked"), "calib_method",
             "must be 'auto', 'platt', 'isotonic' or 'stacked'", "Use --calib-method auto, platt, isotonic or stacked.")
        need(self.final_model in ("refit", "cv-ensemble"), "final_model", "must be 'refit' or 'cv-ensemble'",
             "Use --final-model refit or cv-ensemble.")
        need(isinstance(self.device, str) and re.fullmatch(r"cpu|cuda(:\d+)?", self.device) is not None, "device",
             "must be 'cpu', 'cuda' or 'cuda:<ordinal>'", "Use --device cpu or --device cuda.")
        need(is_int(self.max_genes_per_batch) and self.max_genes_per_batch >= 2, "max_genes_per_batch", "must be an integer >= 2", "Use e.g. --max-genes-per-batch 1200.")
        need(self.max_memory_gb is None or (isinstance(self.max_memory_gb, (int, float)) and self.max_memory_gb > 0), "max_memory_gb", "must be > 0", "Use e.g. --max-memory-gb 12.")
        need(self.ensemble_method in ("voting", "weighted"), "ensemble_method", "must be 'voting' or 'weighted'", "Use --ensemble-method voting or weighted.")
        need(self.ensemble_cv in ("leave-batch-out", "full"), "ensemble_cv", "must be 'leave-batch-out' or 'full'", "Use --ensemble-cv leave-batch-out or full.")
        need(isinstance(self.screening_sample, (int, float)) and self.screening_sample > 0, "screening_sample", "must be a fraction in (0, 1] or a gene count", "Use e.g. --screening-sample 0.1.")
        need(isinstance(self.leakage_threshold, (int, float)) and 0 < self.leakage_threshold <= 1, "leakage_threshold", "must be in (0, 1]", "Use e.g. --leakage-threshold 0.95.")
        need(isinstance(self.leakage_auc, (int, float)) and 0.5 < self.leakage_auc <= 1, "leakage_auc", "must be in (0.5, 1]", "Use e.g. --leakage-auc 0.999.")
        need(isinstance(self.default_exclusions, bool), "default_exclusions", "must be true or false", "Use --default-exclusions or --no-default-exclusions.")
        need(self.leakage_policy in ("exclude", "warn"), "leakage_policy", "must be 'exclude' or 'warn'", "Use --leakage-policy exclude or warn.")
        need(isinstance(self.max_missing, (int, float)) and 0 <= self.max_missing <= 1, "max_missing", "must be a fraction in [0, 1]", "Use e.g. --max-missing 0.5.")
        need(is_int(self.shap_sample) and self.shap_sample >= 10, "shap_sample", "must be an integer >= 10", "Use e.g. --shap-sample 10000.")
        need(self.eval_dataset is None or (isinstance(self.eval_dataset, str) and self.eval_dataset.strip() != ""),
             "eval_dataset", "must be a dataset path or URL", "Use e.g. --eval-dataset data/fullbody.")
        need(self.weight_column is None or (isinstance(self.weight_column, str) and self.weight_column.strip() != ""),
             "weight_column", "must be a column name", "Use e.g. --weight-column sample_weight.")
        need(isinstance(self.tree_weight_power, (int, float)) and not isinstance(self.tree_weight_power, bool)
             and 0 <= self.tree_weight_power <= 1, "tree_weight_power", "must be in [0, 1]",
             "Use e.g. --tree-weight-power 0.5 (0: unweighted trees, 1: full inverse inclusion weights).")
        need(is_int(self.hard_negative_rounds) and 0 <= self.hard_negative_rounds <= 10, "hard_negative_rounds",
             "must be an integer in 0..10", "Use e.g. --hard-negative-rounds 1.")
        need(not (self.overwrite and self.resume), "resume", "cannot be combined with --overwrite", "Pass one of --resume and --overwrite.")
        return self

    def xgb_params(self) -> dict[str, Any]:
        """XGBoost booster parameters for one binary (one-vs-rest) fit."""
        return {
            "objective": "binary:logistic",
            "eval_metric": "logloss",
            "tree_method": "hist",
            "learning_rate": float(self.learning_rate),
            "max_depth": int(self.max_depth),
            "subsample": float(self.subsample),
            "colsample_bytree": float(self.colsample_bytree),
            "max_bin": int(self.max_bin),
            "min_child_weight": float(self.min_child_weight),
            "seed": int(self.seed),
            "device": self.device,
        }

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["storage_options"] = {k: ("***" if "secret" in k or "key" in k or "token" in k else v) for k, v in self.storage_options.items()}
        return d

    @classmethod
    def from_options(cls, **options: Any) -> TrainConfig:
        """Build from keyword options, rejecting unknown names with the known ones listed."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise option_error(unknown[0], "is not a training option", options[unknown[0]], f"Known options: {', '.join(sorted(known))}.")
        for key in ("metadata_columns", "exclude_features", "keep_features"):
            if key in options and isinstance(options[key], (list, set)):
                options[key] = tuple(options[key])
        return cls(**options).validate()


def env_scheduler_address() -> str | None:
    """Scheduler address from ``DASK_SCHEDULER_ADDRESS``, else dask config ``scheduler-address``.

    The environment variable is read now (not only when dask was imported), so it beats a
    value set with ``dask.config.set``; an explicit ``--scheduler`` beats both (in
    :func:`metadask.cluster.connect`). Blank values count as unset.
    """
    env = os.environ.get("DASK_SCHEDULER_ADDRESS", "").strip()
    if env:
        return env
    value = dask.config.get("scheduler-address", None)
    return str(value).strip() or None if value else None
