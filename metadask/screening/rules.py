"""Screening rules: pure functions on column values, label codes and a pandas sample.

The per-column statistics (:func:`column_stats`) are computed the same way whether the
column comes from a pandas sample (:func:`stats_frame`, :func:`screen_sample`) or from the
column blocks that :mod:`metadask.screening.screen` reads on the workers. :func:`decide` turns
a table of statistics into decisions (used / excluded / warned) with one reason per feature.

Rules, in the order a feature is checked (the first that applies gives its reason):

1. user exclusion (``--exclude-features``), then the default exclusion list of known
   annotation artifacts (:data:`ANNOTATION_ARTIFACTS`; off with ``--no-default-exclusions``);
2. all null;
3. infinite values (the models cannot train on them);
4. too many missing values (missing rate > ``--max-missing``);
5. constant, or near-constant (one value in >= 99.9 % of the non-missing rows);
6. exact duplicate of an earlier column (the first in schema order is kept; a protected
   member of a duplicate group is preferred);
7. leakage: |Pearson| or |Spearman| correlation >= ``--leakage-threshold`` with
   splice-vs-neither or with any class indicator (one-vs-rest);
8. label copy: the column's gene-grouped single-feature AUC (:func:`grouped_auc`) >=
   ``--leakage-auc`` (default 0.999), with at most half the error (1 - AUC) of the best
   base-model score: a column that alone separates a class on genes it was not encoded on,
   far better than the base model does, is a near copy of the label (monotone or not),
   whatever its correlation.

Protected columns (base-model scores and ``--keep-features``) are never excluded: a rule
that would exclude one makes it "warned" instead. Under ``--leakage-policy warn`` leaky
features are kept and warned about.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

NEAR_CONSTANT_SHARE = 0.999
"""A column whose most frequent value fills at least this share of its rows is near-constant."""

LEAKY_METADATA_REASON = "leaky metadata (always excluded)"
USER_REASON = "user exclusion"
DEFAULT_REASON = "annotation artifact (default exclusion list)"

ANNOTATION_ARTIFACTS: tuple[str, ...] = (
    "has_tx_info", "missing_transcript_feats", "has_gene_info", "distance_to_start", "distance_to_end",
)
"""Columns of the upstream builder's layout set from the transcript annotation the labels come
from (QC flags: |rho| ~0.9 with the label on some datasets; distances to the transcript ends:
an annotation prior). Excluded by default, as the upstream tool does; ``--keep-features``
wins, ``--no-default-exclusions`` turns the list off."""

AUC_BINS = 64
"""Quantile bins (ties kept together) of the gene-grouped AUC's target encoding."""

TARGET_NAMES: tuple[str, ...] = ("splice-vs-neither", "donor", "acceptor", "neither")
"""Leakage targets: splice site (donor or acceptor) vs neither, then each class vs the rest."""

TABLE_COLUMNS: tuple[str, ...] = (
    "feature", "pearson", "spearman", "target", "grouped_auc", "auc_target", "missing_rate", "distinct_ratio",
    "top_value_share", "n_distinct", "n_infinite", "decision", "reason",
)
"""Columns of ``screening/feature_screening.csv``."""

_STAT_COLUMNS = ("pearson", "spearman", "target", "grouped_auc", "auc_target", "missing_rate", "distinct_ratio",
                 "top_value_share", "n_distinct", "n_infinite", "rows", "digest")

# integer-valued columns whose range is below this are counted with bincount (O(n)), not a sort
_BINCOUNT_RANGE = 1 << 20


@dataclass(frozen=True)
class ColumnStats:
    """Screening statistics of one column on the sample."""

    rows: int
    missing_rate: float
    n_infinite: int
    n_distinct: int
    distinct_ratio: float
    top_value_share: float
    pearson: float
    """Signed correlation of largest magnitude over :data:`TARGET_NAMES` (NaN if undefined)."""
    spearman: float
    target: str
    """The target of the largest |Pearson| or |Spearman| correlation ('' if none)."""
    digest: str
    """Hash of the exact values (NaN-aware): equal digests mean duplicate columns."""
    grouped_auc: float = float("nan")
    """Largest gene-grouped single-feature AUC over :data:`TARGET_NAMES` (NaN without genes)."""
    auc_target: str = ""


def to_float64(values: pd.Series | np.ndarray) -> np.ndarray:
    """Column values as float64 with NaN for missing (nullable, boolean and null types too)."""
    if isinstance(values, pd.Series):
        if values.dtype == object:
            values = pd.to_numeric(values, errors="coerce")
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.asarray(values, dtype=np.float64)


def canonical(values: np.ndarray) -> np.ndarray:
    """float64 values with one NaN bit pattern and -0.0 folded into 0.0 (for hashing)."""
    v = np.asarray(values, dtype=np.float64) + 0.0
    v[np.isnan(v)] = np.nan
    return v


def new_digest() -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=16)


def column_digest(values: np.ndarray) -> str:
    """Digest of a whole column (same as feeding :func:`canonical` chunks to :func:`new_digest`)."""
    h = new_digest()
    h.update(canonical(values).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Targets:
    """Leakage target indicators (one row per :data:`TARGET_NAMES`) with their moments."""

    t: np.ndarray
    """float64, shape (targets, rows), C-contiguous (each target's rows are contiguous)."""
    stt: np.ndarray
    """Sum of squared deviations of each target (0 where a target is constant)."""

    @classmethod
    def of(cls, t: np.ndarray) -> Targets:
        t = np.ascontiguousarray(t, dtype=np.float64)
        n = t.shape[1]
        p = t.mean(axis=1) if n else np.zeros(len(t))
        return cls(t, n * p * (1.0 - p))

    def subset(self, mask: np.ndarray) -> Targets:
        return Targets.of(self.t[:, mask])


def leakage_targets(codes: np.ndarray) -> Targets:
    """Indicators of :data:`TARGET_NAMES` for label codes 0/1/2 (0 neither, 1 donor, 2 acceptor)."""
    codes = np.asarray(codes)
    return Targets.of(np.vstack([codes > 0, codes == 1, codes == 2, codes == 0]))


def _value_counts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inverse, counts) of the distinct values of ``x`` (finite, non-empty), sorted by value."""
    lo, hi = float(x.min()), float(x.max())
    if hi - lo < _BINCOUNT_RANGE and np.array_equal(x, np.floor(x)):
        # k-mer counts and flags: small non-negative integers after shifting; no sort needed
        shifted = (x - lo).astype(np.int64)
        full = np.bincount(shifted)
        present = np.flatnonzero(full)
        lookup = np.empty(len(full), dtype=np.int64)
        lookup[present] = np.arange(len(present))
        return lookup[shifted], full[present]
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return inverse.reshape(-1), counts


def _correlations(v: np.ndarray, targets: Targets) -> np.ndarray:
    """Pearson correlation of ``v`` with each target (NaN where undefined)."""
    vc = v - v.mean()
    # einsum, not BLAS: a threaded BLAS dot product on a busy worker was 50x slower than
    # this single-threaded loop (parallelism comes from screening blocks concurrently)
    svv = float(np.einsum("i,i->", vc, vc))
    svt = np.einsum("ki,i->k", targets.t, vc)  # sum(vc) == 0: the co-moment with centred targets
    with np.errstate(divide="ignore", invalid="ignore"):
        r = svt / np.sqrt(svv * targets.stt)
    r[(targets.stt <= 0) | (svv <= 0)] = np.nan
    return np.clip(r, -1.0, 1.0)


def _largest(r: np.ndarray) -> tuple[float, int]:
    if np.all(np.isnan(r)):
        return float("nan"), -1
    i = int(np.nanargmax(np.abs(r)))
    return float(r[i]), i


def gene_halves(genes: Sequence[object] | np.ndarray) -> np.ndarray:
    """0/1 per row: which half of the genes a row's gene falls in (a stable hash of its id)."""
    ids = pd.unique(np.asarray(genes, dtype=object))
    half = {g: zlib.crc32(str(g).encode()) & 1 for g in ids}
    return np.fromiter((half[g] for g in genes), dtype=np.int8, count=len(genes))


def _auc_from_counts(score: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC of groups of rows sharing a score (``pos`` / ``neg`` rows each); ties count half."""
    levels, inverse = np.unique(score, return_inverse=True)
    p = np.bincount(inverse, weights=pos, minlength=len(levels))
    q = np.bincount(inverse, weights=neg, minlength=len(levels))
    total_p, total_q = p.sum(), q.sum()
    if total_p <= 0 or total_q <= 0:
        return float("nan")
    below = np.cumsum(q) - q
    return float((p * (below + 0.5 * q)).sum() / (total_p * total_q))


def grouped_auc(inverse: np.ndarray, counts: np.ndarray, targets: Targets, halves: np.ndarray) -> np.ndarray:
    """Gene-grouped single-feature AUC of a column with each target (NaN where undefined).

    The column's values (``inverse``/``counts`` of its distinct values, sorted) are cut into at
    most :data:`AUC_BINS` quantile bins (equal values share a bin). Each bin's rate of the
    target is learned on one half of the genes and scores the rows of the other half (and
    vice versa); the AUC of those scores is the column's. A near copy of the label scores ~1
    whatever its shape (monotone, U-shaped, a code per class); a column that memorises each
    gene's labels (useless on other genes) scores ~0.5, as does noise.
    """
    n = len(inverse)
    start = np.cumsum(counts) - counts  # rows before each distinct value
    bins = np.minimum((start * AUC_BINS) // max(n, 1), AUC_BINS - 1).astype(np.int64)[inverse]
    key = bins + AUC_BINS * halves.astype(np.int64)
    tot = np.bincount(key, minlength=2 * AUC_BINS).reshape(2, AUC_BINS).astype(np.float64)
    out = np.full(len(targets.t), np.nan)
    for k, t in enumerate(targets.t):
        pos = np.bincount(key, weights=t, minlength=2 * AUC_BINS).reshape(2, AUC_BINS)
        prior = (pos.sum(axis=1) + 1.0) / (tot.sum(axis=1) + 2.0)
        rate = (pos + prior[:, None]) / (tot + 1.0)  # one pseudo-row at the half's base rate
        score = rate[::-1]  # half h is scored by the rates of the other half
        out[k] = _auc_from_counts(score.ravel(), pos.ravel(), (tot - pos).ravel())
    return out


def column_stats(values: np.ndarray, targets: Targets, digest: str | None = None,
                 halves: np.ndarray | None = None) -> ColumnStats:
    """Statistics of one column (any float dtype, NaN = missing) against the leakage targets.

    Correlations use the rows where the column is finite. Spearman's correlation with a binary
    target is Pearson's correlation of the column's average ranks with the target (the
    target's own ranks are an affine function of it), so only the column is ranked.
    ``halves`` (0/1 per row, :func:`gene_halves`) enables the gene-grouped AUC
    (:func:`grouped_auc`) on the finite rows.
    """
    x = np.asarray(values)
    n = len(x)
    finite = np.isfinite(x)
    missing = np.isnan(x)
    n_missing = int(missing.sum())
    n_inf = int(n - n_missing - finite.sum())
    if digest is None:
        digest = column_digest(x)
    nan = float("nan")
    if n == 0 or n_missing == n:
        return ColumnStats(n, 1.0 if n else nan, n_inf, 0, nan, nan, nan, nan, "", digest)
    n_observed = n - n_missing
    all_finite = n_inf == 0
    v = x.astype(np.float64) if all_finite and n_missing == 0 else x[finite].astype(np.float64)
    t = targets if all_finite and n_missing == 0 else targets.subset(finite)
    if not all_finite:  # distinct values and top share count the infinities too
        _, counts_observed = np.unique(x[~missing], return_counts=True)
        n_distinct, top = len(counts_observed), float(counts_observed.max() / n_observed)
    if len(v) == 0:  # only infinities
        return ColumnStats(n, n_missing / n, n_inf, n_distinct, n_distinct / n_observed, top, nan, nan, "", digest)
    inverse, counts = _value_counts(v)
    if all_finite:
        n_distinct, top = len(counts), float(counts.max() / len(v))
    pearson, ip = _largest(_correlations(v, t))
    if len(counts) > 1:
        avg_rank = np.cumsum(counts) - (counts - 1) / 2.0
        spearman, is_ = _largest(_correlations(avg_rank[inverse], t))
    else:
        spearman, is_ = nan, -1
    best = max(((abs(pearson), ip), (abs(spearman), is_)), key=lambda a: -1 if np.isnan(a[0]) else a[0])
    target = TARGET_NAMES[best[1]] if best[1] >= 0 else ""
    auc, auc_target = nan, ""
    if halves is not None and len(counts) > 1:
        h = halves if all_finite and n_missing == 0 else np.asarray(halves)[finite]
        aucs = grouped_auc(inverse, counts, t, h)
        if not np.all(np.isnan(aucs)):
            ia = int(np.nanargmax(aucs))
            auc, auc_target = float(aucs[ia]), TARGET_NAMES[ia]
    return ColumnStats(n, n_missing / n, n_inf, n_distinct, n_distinct / n_observed, top,
                       pearson, spearman, target, digest, auc, auc_target)


def stats_frame(sample: pd.DataFrame, features: Sequence[str], label_column: str,
                gene_column: str = "gene_id") -> pd.DataFrame:
    """Statistics of ``features`` on a pandas ``sample`` (one row per feature, in order).

    Values are screened as the models see them: float32 (missing as NaN); duplicate digests
    use the exact values as stored. The gene-grouped AUC needs ``gene_column`` (NaN without).
    """
    from metadask.dataset.schema import encode_labels

    targets = leakage_targets(encode_labels(sample[label_column], label_column))
    halves = gene_halves(sample[gene_column].to_numpy()) if gene_column in sample else None
    rows = []
    for name in features:
        raw = to_float64(sample[name])
        digest = column_digest(raw)
        with np.errstate(over="ignore"):
            st = column_stats(raw.astype(np.float32), targets, digest, halves)
        rows.append({"feature": name, **{k: getattr(st, k) for k in _STAT_COLUMNS}})
    return pd.DataFrame(rows, columns=["feature", *_STAT_COLUMNS])


@dataclass(frozen=True)
class Decisions:
    """Outcome of :func:`decide`."""

    features: list[str]
    excluded: dict[str, str]
    warnings: list[str]
    table: pd.DataFrame


def _pct(share: float) -> str:
    return f"{100 * share:.4g} %"


def rule_reason(st: Mapping[str, object], *, leakage_threshold: float, max_missing: float,
                leakage_auc: float = 1.1, reference_auc: float = float("nan")) -> tuple[str, str] | None:
    """(rule, reason) of the first automatic rule that excludes a column, or ``None``.

    ``rule`` is one of ``all-null``, ``infinite``, ``missing``, ``constant``, ``leakage``
    (duplicates depend on other columns and are handled by :func:`decide`). ``reference_auc``
    is the best gene-grouped AUC of the base-model scores (NaN: none), which a label copy must
    beat as well as ``leakage_auc``.
    """
    missing = float(st["missing_rate"])  # type: ignore[arg-type]
    if missing >= 1.0:
        return "all-null", "all null"
    if int(st["n_infinite"]) > 0:  # type: ignore[call-overload]
        return "infinite", f"infinite values: {int(st['n_infinite'])} rows of the sample"  # type: ignore[call-overload]
    if missing > max_missing:
        return "missing", f"too many missing values: {_pct(missing)} > {_pct(max_missing)}"
    top = float(st["top_value_share"])  # type: ignore[arg-type]
    if int(st["n_distinct"]) <= 1:  # type: ignore[call-overload]
        return "constant", "constant: one value in every non-missing row"
    if top >= NEAR_CONSTANT_SHARE:
        return "constant", f"near-constant: one value in {100 * top:.3f} % of rows (>= {_pct(NEAR_CONSTANT_SHARE)})"
    return _leak(st, leakage_threshold) or _label_copy(st, leakage_auc, reference_auc)


def _label_copy(st: Mapping[str, object], threshold: float, reference: float) -> tuple[str, str] | None:
    auc = float(st.get("grouped_auc", float("nan")))  # type: ignore[arg-type]
    # a near copy errs at most half as often as the best base score: derived features
    # (surge ratios, peak heights) come close to the base score but not that close to 1
    if np.isnan(auc) or auc < threshold or (not np.isnan(reference) and 1.0 - auc > (1.0 - reference) / 2):
        return None
    base = "" if np.isnan(reference) else f", best base score {reference:.3f}"
    return "leakage", f"leakage: gene-grouped AUC {auc:.3f} with {st.get('auc_target', '')} >= {threshold:g}{base}"


def _leak(st: Mapping[str, object], threshold: float) -> tuple[str, str] | None:
    pear, spear = float(st["pearson"]), float(st["spearman"])  # type: ignore[arg-type]
    hits = [(abs(v), name) for v, name in ((pear, "pearson"), (spear, "spearman")) if not np.isnan(v) and abs(v) >= threshold]
    if not hits:
        return None
    value, kind = max(hits)
    return "leakage", f"leakage: |{kind}| {value:.3f} with {st['target']} >= {threshold:g}"


def decide(
    stats: pd.DataFrame,
    *,
    protected: Iterable[str] = (),
    protected_why: Mapping[str, str] | None = None,
    user_excluded: Iterable[str] = (),
    default_excluded: Iterable[str] = (),
    reference: Iterable[str] = (),
    leakage_threshold: float = 0.95,
    leakage_auc: float = 0.999,
    leakage_policy: str = "exclude",
    max_missing: float = 0.5,
) -> Decisions:
    """Decide, per feature of ``stats`` (rows in schema order), whether it is used.

    Parameters
    ----------
    stats
        One row per feature with ``feature`` and the statistics of :func:`column_stats`.
    protected
        Columns never excluded automatically (base scores, ``--keep-features``); a rule or a
        user exclusion that hits one makes it "warned".
    protected_why
        Optional feature -> why it is protected, for the warning text.
    user_excluded
        Feature names the user excluded (already resolved to features of ``stats``).
    default_excluded
        Features of the default exclusion list (:data:`ANNOTATION_ARTIFACTS`) to drop; a
        protected one (``--keep-features``) is simply used.
    reference
        Columns (the base-model scores) whose best gene-grouped AUC a label copy must exceed.
    """
    protected = set(protected)
    why = dict(protected_why or {})
    user = set(user_excluded)
    defaults = set(default_excluded) - protected
    table = stats.reset_index(drop=True).copy()
    names = list(table["feature"])
    ref_aucs = [float(a) for a in table.loc[table["feature"].isin(list(reference)), "grouped_auc"]] \
        if "grouped_auc" in table else []
    ref_aucs = [a for a in ref_aucs if not np.isnan(a)]
    reference_auc = max(ref_aucs) if ref_aucs else float("nan")
    # duplicate groups: representative = first protected member, else the first one
    rep_of: dict[str, str] = {}
    if "digest" in table:
        for _, group in table.groupby("digest", sort=False):
            members = list(group["feature"])
            if len(members) < 2:
                continue
            rep = next((m for m in members if m in protected), members[0])
            for m in members:
                if m != rep:
                    rep_of[m] = rep
    features: list[str] = []
    excluded: dict[str, str] = {}
    warnings: list[str] = []
    decisions, reasons = [], []
    for i, name in enumerate(names):
        st = table.iloc[i]
        if name in user:
            rule, reason = "user", USER_REASON
        elif name in defaults:
            rule, reason = "default", DEFAULT_REASON
        else:
            hit = rule_reason(st, leakage_threshold=leakage_threshold, max_missing=max_missing,
                              leakage_auc=leakage_auc, reference_auc=reference_auc)
            if hit is not None and hit[0] != "leakage":
                rule, reason = hit
            elif name in rep_of:
                rule, reason = "duplicate", f"duplicate of {rep_of[name]}"
            elif hit is not None:
                rule, reason = hit
            else:
                rule, reason = "", ""
        if not rule:
            decision = "used"
        elif name in protected:
            decision = "warned"
            warnings.append(f"{name} would be excluded ({reason}) but is protected ({why.get(name, 'protected')}); kept")
            reason = f"{reason} (kept: {why.get(name, 'protected')})"
        elif rule == "leakage" and leakage_policy == "warn":
            decision = "warned"
            warnings.append(f"{name} looks leaky ({reason}); kept because of --leakage-policy warn")
            reason = f"{reason} (kept: --leakage-policy warn)"
        else:
            decision = "excluded"
            excluded[name] = reason
        if decision != "excluded":
            features.append(name)
        decisions.append(decision)
        reasons.append(reason)
    table["decision"] = decisions
    table["reason"] = reasons
    return Decisions(features, excluded, warnings, table)


def screen_sample(
    sample: pd.DataFrame,
    features: Sequence[str],
    label_column: str = "splice_type",
    **options: object,
) -> Decisions:
    """Screen ``features`` of a pandas ``sample`` (convenience: :func:`stats_frame` + :func:`decide`)."""
    return decide(stats_frame(sample, features, label_column), **options)  # type: ignore[arg-type]


def reason_category(reason: str) -> str:
    """The rule a reason belongs to ("leakage", "duplicate", "near-constant", ...), for summaries."""
    if reason.startswith("duplicate of"):
        return "duplicate"
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip()
