"""Global feature screening: one exclusion list, computed once on a representative gene sample.

:func:`screen_features` picks the sample genes from the gene index, then screens the
features in column blocks: one task per block (on the Dask workers when a client is
active, else on a few local threads) reads only that block's columns, only for the sampled
genes and only from the files that hold them, as float32, and returns one row of
statistics per column. No task ever holds more than one block of the sample, so memory is
bounded by ``rows x block columns x 4`` bytes whatever the number of features. The rules
themselves live in :mod:`metadask.screening.rules`.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metadask.cluster.watch import gather
from metadask.config import TrainConfig
from metadask.dataset.index import GeneIndex
from metadask.dataset.sample import representative_genes
from metadask.dataset.schema import LEAKY_METADATA, encode_labels
from metadask.dataset.source import Dataset
from metadask.errors import ConfigError, DatasetError, option_error, preview
from metadask.io import write_text
from metadask.screening.rules import (
    ANNOTATION_ARTIFACTS,
    DEFAULT_REASON,
    LEAKY_METADATA_REASON,
    TABLE_COLUMNS,
    USER_REASON,
    ColumnStats,
    canonical,
    column_stats,
    decide,
    gene_halves,
    leakage_targets,
    new_digest,
    reason_category,
    to_float64,
)

log = logging.getLogger("metadask.screening")

EXCLUDED_FILE = "global_excluded_features.txt"
TABLE_FILE = os.path.join("screening", "feature_screening.csv")
MIN_SAMPLE_GENES = 50
BLOCK_BYTES = 128 * 2**20
"""Target size of one float32 column block (rows x columns x 4 bytes)."""
MAX_BLOCK_COLUMNS = 64
MIN_BLOCK_COLUMNS = 4
LOCAL_THREADS = 4
"""Blocks screened at once without a Dask client (each holds one block in memory)."""

_PATH_SUFFIXES = (".txt", ".csv", ".tsv", ".list")


@dataclass(frozen=True)
class ScreeningResult:
    """The global feature list of a run and why every other column is left out.

    Attributes
    ----------
    features
        Features used, in schema order (the same list for every fold, ensemble member, the
        final model and the inference manifest).
    excluded
        Feature (or leaky metadata column) -> reason, in schema order.
    warnings
        Protected columns a rule would have excluded, names matching no column, leaky
        features kept under ``--leakage-policy warn``.
    table
        One row per screened column (:data:`~metadask.screening.rules.TABLE_COLUMNS`);
        ``None`` when the list was reused from a file.
    sample_genes, sample_rows
        The genes screened and the number of their rows read (0 / empty when reused).
    source
        ``"sample"`` or ``"file:<path>"``.
    settings
        The thresholds used (for the output headers and the summary).
    """

    features: list[str]
    excluded: dict[str, str]
    warnings: list[str]
    table: pd.DataFrame | None
    sample_genes: list[str]
    sample_rows: int
    source: str
    settings: dict[str, Any] = field(default_factory=dict)

    def screening_table(self) -> pd.DataFrame:
        """The table to write: :attr:`table`, or decisions only when the list was reused."""
        if self.table is not None:
            return self.table.reindex(columns=list(TABLE_COLUMNS))
        rows = [{"feature": f, "decision": "used", "reason": ""} for f in self.features]
        rows += [{"feature": f, "decision": "excluded", "reason": r} for f, r in self.excluded.items()]
        return pd.DataFrame(rows).reindex(columns=list(TABLE_COLUMNS))

    def write(self, out_dir: str | os.PathLike) -> None:
        """Write ``global_excluded_features.txt`` and ``screening/feature_screening.csv`` atomically."""
        out = Path(out_dir)
        (out / "screening").mkdir(parents=True, exist_ok=True)
        lines = ["# metadask global feature exclusions: name<TAB>reason (reuse with --screening-from)"]
        if self.source == "sample":
            lines.append(f"# source: sample of {len(self.sample_genes)} genes ({self.sample_rows} rows)")
        else:
            lines.append(f"# source: {self.source}")
        if self.settings:
            lines.append("# settings: " + " ".join(f"{k}={v}" for k, v in self.settings.items()))
        lines.append(f"# {len(self.features)} features used, {len(self.excluded)} excluded")
        lines += [f"{name}\t{reason}" for name, reason in self.excluded.items()]
        write_text(out / EXCLUDED_FILE, "\n".join(lines) + "\n")
        write_text(out / TABLE_FILE, self.screening_table().to_csv(index=False, float_format="%.6g"))


# -- user lists -------------------------------------------------------------------------
def _read_name_lines(path: str) -> list[tuple[str, str]]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, reason = line.partition("\t")
            out.append((name.strip(), reason.strip()))
    return out


def _looks_like_path(value: str) -> bool:
    return "/" in value or os.sep in value or value.lower().endswith(_PATH_SUFFIXES)


def parse_exclude_option(value: str | Sequence[str] | None, option: str = "exclude_features") -> list[str]:
    """Feature names from ``--exclude-features``: a FILE, ``a,b,c``, or a sequence of names.

    A string with a comma is a list; a string naming an existing file is read (one name per
    line, ``#`` comments and blank lines ignored; ``name<TAB>reason`` lines as written in
    ``global_excluded_features.txt`` work too); a string that looks like a path (contains
    ``/``, or ends in .txt/.csv/.tsv/.list) but does not exist is a
    :class:`~metadask.errors.ConfigError`, never read as a feature name; anything else is one
    name. Each element of a sequence follows the same rules. Order is kept, repeats dropped.
    """
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    names: list[str] = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        if "," in item:
            names += [n.strip() for n in item.split(",") if n.strip()]
        elif os.path.isfile(item):
            names += [n for n, _ in _read_name_lines(item) if n]
        elif os.path.isdir(item):
            raise option_error(option, "names a directory, not a file", item, "Pass a file with one feature name per line, or names as a,b,c.")
        elif _looks_like_path(item):
            raise option_error(option, "names a file that does not exist", item,
                               "Check the path, or pass feature names as a,b,c.")
        else:
            names.append(item)
    return list(dict.fromkeys(names))


def load_exclusions(path: str | os.PathLike) -> dict[str, str]:
    """Read a ``global_excluded_features.txt`` (or a run directory holding one): name -> reason.

    Lines without a reason get "listed in <path>".
    """
    p = os.fspath(path)
    if os.path.isdir(p) and os.path.isfile(os.path.join(p, EXCLUDED_FILE)):
        p = os.path.join(p, EXCLUDED_FILE)
    if not os.path.isfile(p):
        raise ConfigError(
            f"The exclusion list '{p}' does not exist. Pass the {EXCLUDED_FILE} of an earlier run "
            "(or its output directory) to --screening-from."
        )
    try:
        entries = _read_name_lines(p)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read the exclusion list '{p}': {exc}. Pass a text file with one name per line.") from exc
    return {name: reason or f"listed in {p}" for name, reason in entries if name}


# -- reading the sample in column blocks -------------------------------------------------
def block_columns(rows: int, n_features: int) -> int:
    """Columns per block so that one float32 block stays near :data:`BLOCK_BYTES`."""
    per_column = max(1, rows) * 4
    return int(max(MIN_BLOCK_COLUMNS, min(MAX_BLOCK_COLUMNS, BLOCK_BYTES // per_column, max(1, n_features))))


def screen_block(
    dataset: Dataset,
    files: Sequence[str],
    genes: Sequence[str],
    columns: Sequence[str],
    expected_rows: int,
) -> tuple[list[ColumnStats], int]:
    """Read ``columns`` of the rows of ``genes`` from ``files`` and compute their statistics.

    Runs on a worker. Holds one float32 block (column-major) plus one file's columns at a
    time. Returns the statistics and the number of rows read, which must equal
    ``expected_rows`` (the gene index's count for ``genes``).
    """
    label, gene = dataset.label_column, dataset.gene_column
    x = np.empty((expected_rows, len(columns)), dtype=np.float32, order="F")
    codes = np.empty(expected_rows, dtype=np.int8)
    halves = np.empty(expected_rows, dtype=np.int8)
    hashers = [new_digest() for _ in columns]
    pos = 0
    for file in files:
        # k-mer columns this file lacks come back as 0 (schema drift, applied by the dataset)
        df = dataset.read_file(file, [label, gene, *(c for c in columns if c != gene)], genes)
        m = len(df)
        if pos + m > expected_rows:
            raise DatasetError(
                f"Read more rows for the screening sample than the gene index lists ({expected_rows}) "
                f"in '{file}'. The dataset changed after indexing; rebuild the index and retry."
            )
        codes[pos:pos + m] = encode_labels(df[label], label)
        halves[pos:pos + m] = gene_halves(df[gene].astype(str).to_numpy())
        for j, c in enumerate(columns):
            raw = to_float64(df[c])
            hashers[j].update(canonical(raw).tobytes())
            with np.errstate(over="ignore"):
                x[pos:pos + m, j] = raw
        pos += m
        del df
    if pos != expected_rows:
        raise DatasetError(
            f"Read {pos} rows for the screening sample but the gene index lists {expected_rows}. "
            "The dataset changed after indexing; rebuild the index and retry."
        )
    targets = leakage_targets(codes)
    stats = [column_stats(x[:, j], targets, hashers[j].hexdigest(), halves) for j in range(len(columns))]
    return stats, pos


def _default_client() -> Any:
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def _run_blocks(dataset: Dataset, files: list[str], genes: list[str], blocks: list[list[str]],
                rows: int, client: Any) -> list[tuple[list[ColumnStats], int]]:
    client = client if client is not None else _default_client()
    if client is not None:
        token = uuid.uuid4().hex[:8]
        futures = [client.submit(screen_block, dataset, files, genes, cols, rows, pure=False,
                                 key=f"metadask-screen-{i}-{token}") for i, cols in enumerate(blocks)]
        return gather(client, futures, "the feature-screening tasks")
    threads = max(1, min(LOCAL_THREADS, os.cpu_count() or 1, len(blocks)))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda cols: screen_block(dataset, files, genes, cols, rows), blocks))


# -- orchestration ------------------------------------------------------------------------
def _names_of(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [n.strip() for n in value.split(",") if n.strip()]
    return [str(n) for n in value]


def _resolve_names(names: list[str], dataset: Dataset, option: str, warnings: list[str]) -> list[str]:
    """The names that are features; warn about the rest."""
    features = set(dataset.schema.feature_columns)
    unknown = [n for n in names if n not in dataset.schema.columns]
    metadata = [n for n in names if n in dataset.schema.columns and n not in features]
    if unknown:
        warnings.append(f"--{option.replace('_', '-')} names no column of the dataset: {preview(unknown)}")
    if metadata:
        warnings.append(f"--{option.replace('_', '-')} names metadata columns, never used as features anyway: {preview(metadata)}")
    return [n for n in names if n in features]


def screen_features(dataset: Dataset, index: GeneIndex, config: TrainConfig, *, client: Any = None) -> ScreeningResult:
    """Screen the dataset's features once, on a representative sample of genes.

    Parameters
    ----------
    dataset, index
        The opened dataset and its gene index.
    config
        Uses ``screening_sample``, ``seed``, ``leakage_threshold``, ``leakage_policy``,
        ``max_missing``, ``exclude_features``, ``keep_features`` and ``screening_from``.
    client
        A Dask client to run the block tasks on (default: the current default client, if
        any; else a few local threads).

    Returns
    -------
    ScreeningResult
        The feature list every model of the run uses, exclusions with reasons, warnings.

    Raises
    ------
    metadask.errors.ConfigError
        ``--exclude-features`` or ``--screening-from`` names a file that does not exist.
    metadask.errors.DatasetError
        A file holding sampled genes cannot be read, or changed after indexing.
    """
    schema = dataset.schema
    all_features = list(schema.feature_columns)
    warnings: list[str] = []
    protected_why = {c: "base-model score" for c in schema.base_score_columns}
    for name in _resolve_names(_names_of(config.keep_features), dataset, "keep_features", warnings):
        protected_why.setdefault(name, "--keep-features")
    user = _resolve_names(parse_exclude_option(config.exclude_features), dataset, "exclude_features", warnings)
    leaky_meta = {c: LEAKY_METADATA_REASON for c in LEAKY_METADATA if c in schema.columns}
    features = set(all_features)
    defaults = [c for c in ANNOTATION_ARTIFACTS if c in features and c not in protected_why] if config.default_exclusions else []
    settings = {"leakage_threshold": config.leakage_threshold, "leakage_auc": config.leakage_auc,
                "default_exclusions": config.default_exclusions, "leakage_policy": config.leakage_policy,
                "max_missing": config.max_missing, "screening_sample": config.screening_sample, "seed": config.seed}

    if config.screening_from:
        result = _reuse(config.screening_from, dataset, all_features, user, defaults, protected_why, leaky_meta, warnings, settings)
    else:
        result = _screen_sample(dataset, index, config, all_features, user, defaults, protected_why, leaky_meta, warnings,
                                settings, client)
    for w in result.warnings:
        log.warning("Screening: %s", w)
    log.info("Screening: %s", _one_line(result, len(all_features)))
    return result


def _reuse(path: str, dataset: Dataset, all_features: list[str], user: list[str], defaults: list[str],
           protected_why: dict[str, str], leaky_meta: dict[str, str], warnings: list[str],
           settings: dict[str, Any]) -> ScreeningResult:
    listed = load_exclusions(path)
    log.info("Screening: reusing %d exclusions from %s (no sample read)", len(listed), path)
    unknown = [n for n in listed if n not in dataset.schema.columns]
    if unknown:
        warnings.append(f"--screening-from lists names that match no column of this dataset: {preview(unknown)}")
    drop: dict[str, str] = {}
    for name in all_features:
        reason = USER_REASON if name in user else listed.get(name, DEFAULT_REASON if name in defaults else None)
        if reason is None:
            continue
        if name in protected_why:
            warnings.append(f"{name} would be excluded ({reason}) but is protected ({protected_why[name]}); kept")
        else:
            drop[name] = reason
    features = [f for f in all_features if f not in drop]
    return ScreeningResult(features, {**drop, **leaky_meta}, warnings, None, [], 0, f"file:{path}", settings)


def _screen_sample(dataset: Dataset, index: GeneIndex, config: TrainConfig, all_features: list[str], user: list[str],
                   defaults: list[str], protected_why: dict[str, str], leaky_meta: dict[str, str], warnings: list[str],
                   settings: dict[str, Any], client: Any) -> ScreeningResult:
    genes = representative_genes(index, config.screening_sample, seed=config.seed, minimum=MIN_SAMPLE_GENES)
    rows = index.rows(genes)
    files = index.files_for(genes)
    # user-excluded columns are not read (they may hold values the models could not use)
    skip = {n for n in [*user, *defaults] if n not in protected_why}
    to_read = [f for f in all_features if f not in skip]
    width = block_columns(rows, len(to_read))
    blocks = [to_read[i:i + width] for i in range(0, len(to_read), width)]
    log.info("Screening %d features on a sample of %d of %d genes (%d rows, %d of %d files), %d columns per block",
             len(to_read), len(genes), index.n_genes, rows, len(files), len(index.files), width)
    outputs = _run_blocks(dataset, files, genes, blocks, rows, client) if blocks else []
    stats: dict[str, ColumnStats] = {}
    for cols, (block_stats, read) in zip(blocks, outputs):
        if read != rows:  # screen_block checks this too; keep the invariant explicit here
            raise DatasetError(f"Screening read {read} rows, expected {rows}.")
        stats.update(zip(cols, block_stats))
    records = []
    for name in all_features:
        st = stats.get(name)
        if st is None:
            records.append({"feature": name, "digest": f"unread:{name}"})
        else:
            records.append({"feature": name, **{k: getattr(st, k) for k in ColumnStats.__dataclass_fields__}})
    frame = pd.DataFrame.from_records(records)
    frame = frame.reindex(columns=["feature", "pearson", "spearman", "target", "grouped_auc", "auc_target", "missing_rate",
                                   "distinct_ratio", "top_value_share", "n_distinct", "n_infinite", "rows", "digest"])
    d = decide(frame, protected=protected_why, protected_why=protected_why, user_excluded=user,
               default_excluded=defaults, reference=dataset.schema.base_score_columns,
               leakage_threshold=config.leakage_threshold, leakage_auc=config.leakage_auc,
               leakage_policy=config.leakage_policy,
               max_missing=config.max_missing)
    for _, row in (d.table.iterrows() if log.isEnabledFor(logging.DEBUG) else ()):
        log.debug("Screening %s: %s%s (pearson %.3f, spearman %.3f, missing %.3f, top share %.4f)",
                  row["feature"], row["decision"], f" - {row['reason']}" if row["reason"] else "",
                  row["pearson"], row["spearman"], row["missing_rate"], row["top_value_share"])
    meta_rows = pd.DataFrame({"feature": list(leaky_meta), "decision": "excluded", "reason": list(leaky_meta.values())})
    table = pd.concat([d.table, meta_rows], ignore_index=True) if len(meta_rows) else d.table
    table = table.reindex(columns=list(TABLE_COLUMNS))
    return ScreeningResult(d.features, {**d.excluded, **leaky_meta}, warnings + d.warnings, table,
                           list(genes), rows, "sample", settings)


# -- reporting -----------------------------------------------------------------------------
def _by_reason(excluded: dict[str, str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name, reason in excluded.items():
        groups.setdefault(reason_category(reason), []).append(name)
    return groups


def _one_line(result: ScreeningResult, n_features: int) -> str:
    groups = Counter({k: len(v) for k, v in _by_reason(result.excluded).items()})
    detail = ", ".join(f"{k} {n}" for k, n in groups.most_common())
    return (f"{len(result.features)} of {n_features} features used; {len(result.excluded)} excluded"
            + (f" ({detail})" if detail else "") + f"; {len(result.warnings)} warnings")


def summary_lines(result: ScreeningResult) -> list[str]:
    """The "Features Used" / "Features Excluded" sections of ``training_summary.txt``."""
    if result.source == "sample":
        source = f"screened on a sample of {len(result.sample_genes)} genes ({result.sample_rows:,} rows)"
    else:
        source = f"exclusions reused from {result.source[len('file:'):]}"
    warned = [] if result.table is None else list(result.table.loc[result.table["decision"] == "warned", "feature"])
    lines = ["Features Used", f"  {len(result.features)} features ({source})"]
    if warned:
        lines.append(f"  kept despite a rule (warned): {preview(warned, 12)}")
    lines += ["", "Features Excluded", f"  {len(result.excluded)} excluded (list: {EXCLUDED_FILE})"]
    for category, names in sorted(_by_reason(result.excluded).items(), key=lambda kv: (-len(kv[1]), kv[0])):
        lines.append(f"  {category} ({len(names)}): {preview(names, 12)}")
    if result.warnings:
        lines += ["", "Screening warnings"] + [f"  {w}" for w in result.warnings]
    return lines
