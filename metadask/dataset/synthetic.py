"""Synthetic splice-site training data in the upstream layout.

:func:`make_dataset` writes ``OUT/master/batch_00000.parquet ...`` (whole genes per file) and
``OUT/master/gene_manifest.csv`` with the columns of the real datasets (ids and metadata,
base-model scores, probability and context features, gene structure, sequence window
features with k-mer counts, QC flags) plus two deliberately leaky columns
(:data:`LEAKY_COLUMNS`) for screening tests.

How a gene is simulated (on its transcription strand; position 0 = gene start):

* exon/intron structure; donors are the last exon base (``MAG|GTRAGT`` written around them
  with a per-site strength), acceptors the first exon base (polypyrimidine tract, ``YAG|G``);
  background bases random with a per-gene GC content; 60 nt flanks so every window is 101 nt;
* decoys: GT/AG motifs at neither positions, often inside (GT)n / (AG)n microsatellites
  that k-mer counts and sequence complexity reveal; 30 % are "unannotated sites" with a
  canonical motif and a sharp peak (irreducible false positives);
* base-model scores: a background track (higher at every GT/AG), a sharp peak at most true
  sites, a peak below 0.5 at ~18 % of them (false negatives; most still sharp local peaks
  with strong motifs, so context and k-mers can rescue them, about a third scored like a
  plain GT/AG) and broad bumps at most decoys (false positives / hard negatives). Base
  binary F1 at 0.5 is ~0.87; a quick XGBoost meta-model on held-out genes reaches ~0.95;
* rows: every true site, every position scoring >= 0.15, decoys, neither positions within
  +-75 nt of sites and decoys, and some random ones (400-1,300 rows per gene);
* or, with ``full_body=True`` (``make-dataset --full-body``), **every position** of shorter
  genes (``gene_length``, default 3,000 nt; one intron per ~600 nt), simulated by the same
  code: ~80 % of sites score >= 0.5, missed ones have moderate or faint peaks, decoys are
  high non-site peaks, and plain GT / AG positions form a background of low-score local
  peaks (~25 per site with score >= 0.001, ~3 per site >= 0.01: the rows a sampled dataset
  mostly lacks). Consensus motifs make k-mers informative where scores are not.

With ``n_kmer_drift`` some genes of some files (never the first) contain N bases, so those
files carry extra ``{k}mer_...N...`` columns: deliberate schema drift across files.
Everything is a function of ``(seed, gene index)`` (plus the file index for the N genes).
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import shutil
from collections.abc import Callable, Sequence
from itertools import product

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from metadask.dataset.simulation import _C, _FLANK, _G, _N, DEFAULT_GENE_LENGTH, _Gene, _simulate_gene
from metadask.errors import OutputError, option_error
from metadask.io import atomic_write

__all__ = ["DEFAULT_GENE_LENGTH", "LABELS", "LEAKY_COLUMNS", "NEAR_CONSTANT_COLUMNS",
           "UNLABELLED_DROPS", "dataset_schema", "make_dataset"]

LABELS: tuple[str, ...] = ("neither", "donor", "acceptor")
#: Numeric columns that leak the label (|Pearson| >= 0.95 with splice-vs-neither or donor).
LEAKY_COLUMNS: tuple[str, ...] = ("is_annotated_site", "is_annotated_donor")
#: QC flags: ``has_gene_info`` is constant (1), the other two differ in ~0.05 % of rows.
NEAR_CONSTANT_COLUMNS: tuple[str, ...] = (
    "has_tx_info", "has_gene_info", "missing_transcript_feats")

#: Columns an unlabelled dataset (``labels=False`` / ``--no-labels``) does not have: the
#: label and the upstream bookkeeping derived from it. The feature columns all stay (the
#: leaky ones too), so a model trained on the labelled twin can score the unlabelled one.
UNLABELLED_DROPS: tuple[str, ...] = ("splice_type", "pred_type", "true_position")
EPS = 1e-10
_HALF = 50  # sequence window: +-50 nt around the position
_WIN = 2 * _HALF + 1
_ROW_GROUP_GENES = 25
_ALPHABET = "ACGTN"
_FORMAT_VERSION = 1

_STR, _I64, _F64 = pa.string(), pa.int64(), pa.float64()
_META = [("gene_id", _STR), ("transcript_id", _STR), ("gene_name", _STR), ("gene_type", _STR),
         ("chrom", _STR), ("strand", _STR), ("position", _I64), ("absolute_position", _I64),
         ("window_start", _I64), ("window_end", _I64), ("transcript_count", _I64),
         ("splice_type", _STR), ("pred_type", _STR), ("true_position", _I64),
         ("predicted_position", _I64), ("score", _F64)]
_TRACK = ["is_local_peak", "signal_strength", "peak_height_ratio", "second_derivative",
          "context_diff_ratio", "surge_ratio", "weighted_context", "diff_m1", "diff_m2",
          "diff_p1", "diff_p2"]
_DOUBLES = (["donor_score", "acceptor_score", "neither_score", "splice_probability",
             "relative_donor_probability", "probability_entropy", "splice_neither_diff",
             "splice_neither_logodds", "donor_acceptor_diff", "donor_acceptor_logodds",
             "score_difference_ratio", "context_score_m2", "context_score_m1", "context_score_p1",
             "context_score_p2", "context_neighbor_mean", "context_max", "context_asymmetry"])
_CONTEXT = ([(f"{t}_{f}", _I64 if f == "is_local_peak" else _F64)
             for t in ("donor", "acceptor") for f in _TRACK]
            + [(c, _F64) for c in ("donor_acceptor_peak_ratio", "signal_strength_ratio",
                                   "type_signal_difference")])
_STRUCTURE = [("gene_start", _I64), ("gene_end", _I64), ("gene_length", _I64), ("tx_start", _I64),
              ("tx_end", _I64), ("transcript_length", _I64), ("num_exons", _I64),
              ("avg_exon_length", _F64), ("median_exon_length", _F64),
              ("total_exon_length", _I64), ("total_intron_length", _I64),
              ("n_splice_sites", _I64), ("num_overlaps", _I64), ("distance_to_start", _I64),
              ("distance_to_end", _I64), ("gc_content", _F64), ("sequence_length", _I64),
              ("sequence_complexity", _F64)]
_TAIL = [("has_tx_info", pa.int32()), ("has_gene_info", pa.int32()),
         ("missing_transcript_feats", pa.int8())] + [(c, _F64) for c in LEAKY_COLUMNS]


def _acgt_kmers(k: int) -> list[str]:
    return ["".join(p) for p in product("ACGT", repeat=k)]


def dataset_schema(kmer_sizes: Sequence[int] = (3,),
                   n_kmers: dict[int, Sequence[str]] | None = None, *,
                   labels: bool = True) -> pa.Schema:
    """Arrow schema of one synthetic file (``n_kmers``: N-containing k-mers per k, if any).

    Without ``labels`` the label column and the label-derived bookkeeping columns
    (:data:`UNLABELLED_DROPS`) are left out.
    """
    meta = list(_META) if labels else [f for f in _META if f[0] not in UNLABELLED_DROPS]
    fields = meta + [(c, _F64) for c in _DOUBLES] + _CONTEXT + _STRUCTURE
    for k in sorted(set(kmer_sizes)):
        extra = sorted((n_kmers or {}).get(k, ()))
        fields += [(f"{k}mer_{m}", _F64) for m in _acgt_kmers(k) + extra]
    return pa.schema(fields + _TAIL)


def _finite(x: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(x), x, 0.0)


def _score_features(g: _Gene) -> dict[str, np.ndarray]:
    """Base scores, probability family and context family (PROVENANCE.md formulas)."""
    idx = g.positions + _FLANK
    nb = {t: {k: tr[idx + o] for k, o in (("m2", -2), ("m1", -1), ("x", 0), ("p1", 1), ("p2", 2))}
          for t, tr in (("donor", g.donor), ("acceptor", g.acceptor))}
    d, a = nb["donor"]["x"], nb["acceptor"]["x"]
    n = 1.0 - d - a
    mx = np.maximum(d, a)
    f: dict[str, np.ndarray] = {"score": mx, "donor_score": d, "acceptor_score": a,
                                "neither_score": n}
    f["splice_probability"] = (d + a) / (d + a + n + EPS)
    f["relative_donor_probability"] = d / (d + a + EPS)
    f["probability_entropy"] = -(d * np.log(d + EPS) + a * np.log(a + EPS) + n * np.log(n + EPS))
    f["splice_neither_diff"] = (mx - n) / (np.maximum(mx, n) + EPS)
    f["splice_neither_logodds"] = np.log(d + a + EPS) - np.log(n + EPS)
    f["donor_acceptor_diff"] = (d - a) / (mx + EPS)
    f["donor_acceptor_logodds"] = np.log(d + EPS) - np.log(a + EPS)
    f["score_difference_ratio"] = (d - a) / (d + a + EPS)
    ctx = {k: nb["donor"][k] + nb["acceptor"][k] for k in ("m2", "m1", "p1", "p2")}
    for k in ("m2", "m1", "p1", "p2"):
        f[f"context_score_{k}"] = ctx[k]
    four = np.stack([ctx["m2"], ctx["m1"], ctx["p1"], ctx["p2"]])
    f["context_neighbor_mean"] = four.mean(axis=0)
    f["context_max"] = four.max(axis=0)
    f["context_asymmetry"] = (ctx["m1"] + ctx["m2"]) - (ctx["p1"] + ctx["p2"])
    for t in ("donor", "acceptor"):
        v = nb[t]
        x = v["x"]
        four = np.stack([v["m2"], v["m1"], v["p1"], v["p2"]])
        mean4, max4 = four.mean(axis=0), four.max(axis=0)
        f[f"{t}_is_local_peak"] = ((x > v["m1"]) & (x > v["p1"]) & (x >= 0.001)).astype(np.int64)
        f[f"{t}_signal_strength"] = x - mean4
        f[f"{t}_peak_height_ratio"] = x / (mean4 + EPS)
        f[f"{t}_second_derivative"] = 2 * x - v["m1"] - v["p1"]
        f[f"{t}_context_diff_ratio"] = x / (max4 + EPS)
        f[f"{t}_surge_ratio"] = x / (v["m1"] + v["p1"] + EPS)
        f[f"{t}_weighted_context"] = (0.1 * v["m2"] + 0.2 * v["m1"] + 0.4 * x
                                      + 0.2 * v["p1"] + 0.1 * v["p2"])
        for k in ("m1", "m2", "p1", "p2"):
            f[f"{t}_diff_{k}"] = x - v[k]
    f["donor_acceptor_peak_ratio"] = (f["donor_peak_height_ratio"]
                                      / (f["acceptor_peak_height_ratio"] + EPS))
    f["signal_strength_ratio"] = f["donor_signal_strength"] / (f["acceptor_signal_strength"] + EPS)
    f["type_signal_difference"] = f["donor_signal_strength"] - f["acceptor_signal_strength"]
    return {k: (_finite(v) if v.dtype == np.float64 else v) for k, v in f.items()}


def _kmer_codes(seq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Base-4 code of the k-mer starting at every index, and whether it contains an N."""
    m = len(seq) - k + 1
    s = seq.astype(np.int64)
    code = np.zeros(m, np.int64)
    has_n = np.zeros(m, bool)
    for i in range(k):
        code = code * 4 + (s[i:i + m] & 3)
        has_n |= s[i:i + m] == _N
    return code, has_n


def _kmer_counts(g: _Gene, k: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """ACGT k-mer counts (rows x 4**k) in each row's window, and counts of N-containing k-mers."""
    code, has_n = _kmer_codes(g.seq, k)
    rows = len(g.positions)
    idx = (g.positions + _FLANK - _HALF)[:, None] + np.arange(_WIN - k + 1)
    c, hn = code[idx], has_n[idx]
    flat = np.arange(rows)[:, None] * 4 ** k + c
    flat[hn] = rows * 4 ** k  # N-containing k-mers go to a dump bin
    counts = np.bincount(flat.ravel(), minlength=rows * 4 ** k + 1)[:-1].reshape(rows, 4 ** k)
    extra: dict[str, np.ndarray] = {}
    if hn.any():
        r, j = np.nonzero(hn)
        starts = idx[r, j]
        names = ["".join(_ALPHABET[b] for b in g.seq[p:p + k]) for p in starts]
        for name, row in zip(names, r):
            extra.setdefault(name, np.zeros(rows))[row] += 1.0
    return counts.astype(np.float64), extra


def _sequence_features(g: _Gene) -> dict[str, np.ndarray]:
    start = g.positions + _FLANK - _HALF
    cum = np.concatenate([[0], np.cumsum((g.seq == _C) | (g.seq == _G))])
    gc = (cum[start + _WIN] - cum[start]) / _WIN
    code, has_n = _kmer_codes(g.seq, 2)
    idx = start[:, None] + np.arange(_WIN - 1)
    rows = len(start)
    flat = np.arange(rows)[:, None] * 16 + code[idx]
    flat[has_n[idx]] = rows * 16
    cnt = np.bincount(flat.ravel(), minlength=rows * 16 + 1)[:-1].reshape(rows, 16).astype(float)
    p = cnt / np.maximum(cnt.sum(axis=1, keepdims=True), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)
    return {"gc_content": gc, "sequence_length": np.full(rows, _WIN, np.int64),
            "sequence_complexity": ent + 0.0}


def _gene_columns(g: _Gene, kmer_sizes: Sequence[int]) -> dict[str, np.ndarray]:
    rows = len(g.positions)
    pos = g.positions
    cols: dict[str, np.ndarray] = {}
    absolute = g.gene_start + pos if g.strand == "+" else g.gene_start + g.length - 1 - pos
    is_site = g.labels > 0
    sc = _score_features(g)
    own = np.where(g.labels == 1, sc["donor_score"], sc["acceptor_score"])
    called = sc["score"] >= 0.5
    pred = np.where(is_site, np.where(own >= 0.5, 1, 2), np.where(called, 3, 4))
    cols.update(gene_id=np.full(rows, g.gene_id, object),
                transcript_id=np.full(rows, f"{g.gene_id}.t1", object),
                gene_name=np.full(rows, f"synth{g.index + 1}", object),
                gene_type=np.full(rows, "protein_coding", object),
                chrom=np.full(rows, g.chrom, object), strand=np.full(rows, g.strand, object),
                position=pos, absolute_position=absolute, window_start=absolute - _HALF,
                window_end=absolute + _HALF, transcript_count=np.ones(rows, np.int64),
                splice_type=np.asarray(LABELS, object)[g.labels],
                pred_type=np.asarray(["", "TP", "FN", "FP", "TN"], object)[pred],
                true_position=np.ma.masked_array(pos, ~is_site),
                predicted_position=np.ma.masked_array(pos, ~called))
    cols.update(sc)
    ex = g.exon_lengths
    gene_end = g.gene_start + g.length - 1
    const = {"gene_start": g.gene_start, "gene_end": gene_end, "gene_length": g.length,
             "tx_start": g.gene_start, "tx_end": gene_end, "transcript_length": g.length,
             "num_exons": len(ex), "avg_exon_length": float(ex.mean()),
             "median_exon_length": float(np.median(ex)), "total_exon_length": int(ex.sum()),
             "total_intron_length": g.length - int(ex.sum()), "n_splice_sites": 2 * (len(ex) - 1),
             "num_overlaps": g.num_overlaps}
    for k, v in const.items():
        cols[k] = np.full(rows, v, np.float64 if isinstance(v, float) else np.int64)
    cols["distance_to_start"] = pos
    cols["distance_to_end"] = g.length - 1 - pos
    cols.update(_sequence_features(g))
    for k in kmer_sizes:
        counts, extra = _kmer_counts(g, k)
        for j, name in enumerate(_acgt_kmers(k)):
            cols[f"{k}mer_{name}"] = counts[:, j]
        for name, v in extra.items():
            cols[f"{k}mer_{name}"] = v
    missing = g.noise[:, 0] < 0.0005
    cols["has_tx_info"] = (~missing).astype(np.int32)
    cols["has_gene_info"] = np.ones(rows, np.int32)
    cols["missing_transcript_feats"] = missing.astype(np.int8)
    cols["is_annotated_site"] = (is_site ^ (g.noise[:, 1] < 0.002)).astype(np.float64)
    cols["is_annotated_donor"] = ((g.labels == 1) ^ (g.noise[:, 2] < 0.002)).astype(np.float64)
    return cols


def _table(genes: list[_Gene], schema: pa.Schema, kmer_sizes: Sequence[int]) -> pa.Table:
    per_gene = [_gene_columns(g, kmer_sizes) for g in genes]
    arrays = []
    for field in schema:
        parts = [c.get(field.name) for c in per_gene]
        if any(p is None for p in parts):  # N k-mer column absent from this gene
            parts = [np.zeros(len(g.positions)) if p is None else p for p, g in zip(parts, genes)]
        if isinstance(parts[0], np.ma.MaskedArray):
            arr = np.ma.concatenate(parts)
            arrays.append(pa.array(arr.data, type=field.type, mask=np.ma.getmaskarray(arr)))
        else:
            arrays.append(pa.array(np.concatenate(parts), type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _n_genes_of_file(seed: int, file_index: int, gene_ids: range, drift: bool) -> set[int]:
    """Genes that get N bases: a few genes in about half the files after the first."""
    if not drift or file_index == 0:
        return set()
    rng = np.random.default_rng([seed, 0x4E4E, file_index])
    if file_index != 1 and rng.random() >= 0.5:
        return set()
    n = max(1, round(0.05 * len(gene_ids)))
    return {int(i) for i in rng.choice(np.asarray(gene_ids), size=n, replace=False)}


def _validate(n_genes: object, seed: object, kmer_sizes: object,
              genes_per_file: object, gene_length: object = DEFAULT_GENE_LENGTH) -> tuple[int, ...]:
    def is_int(v: object) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(gene_length) or not 500 <= gene_length <= 1_000_000:  # type: ignore[operator]
        raise option_error("gene_length", "must be an integer between 500 and 1,000,000",
                           gene_length, "Use for example --gene-length 3000.")

    if not is_int(n_genes) or n_genes < 1:  # type: ignore[operator]
        raise option_error("n_genes", "must be an integer >= 1", n_genes,
                           "Use --n-genes 1 or more.")
    if not is_int(genes_per_file) or genes_per_file < 1:  # type: ignore[operator]
        raise option_error("genes_per_file", "must be an integer >= 1", genes_per_file,
                           "Use --genes-per-file 1 or more.")
    if not is_int(seed) or seed < 0:  # type: ignore[operator]
        raise option_error("seed", "must be an integer >= 0", seed, "Use --seed 0 or more.")
    try:
        sizes = (kmer_sizes,) if is_int(kmer_sizes) else tuple(kmer_sizes)  # type: ignore[arg-type]
    except TypeError:
        sizes = ()
    if (isinstance(kmer_sizes, (str, bytes)) or not sizes
            or not all(is_int(k) and 1 <= k <= 6 for k in sizes)):  # type: ignore[operator]
        raise option_error("kmer_sizes", "must list k-mer sizes between 1 and 6", kmer_sizes,
                           "Use for example --kmer 3 or --kmer 3 --kmer 5.")
    return tuple(sorted({int(k) for k in sizes}))  # type: ignore[call-overload]


def _prepare_output(out: pathlib.Path, overwrite: bool) -> pathlib.Path:
    if out.exists() and not out.is_dir():
        raise OutputError(f"The output path {out} exists and is not a directory; "
                          "choose another path.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputError(f"The output directory {out} exists and is not empty; choose "
                              "another path or pass overwrite=True / --overwrite to replace it.")
        if (out / "master").exists():
            shutil.rmtree(out / "master")
    master = out / "master"
    master.mkdir(parents=True, exist_ok=True)
    return master


def make_dataset(out: str | os.PathLike[str], n_genes: int = 1000, *, seed: int = 42,
                 kmer_sizes: Sequence[int] = (3,), genes_per_file: int = 100,
                 n_kmer_drift: bool = True, overwrite: bool = False,
                 progress: Callable[[int, int], None] | None = None, full_body: bool = False,
                 gene_length: int = DEFAULT_GENE_LENGTH, labels: bool = True) -> pathlib.Path:
    """Write a synthetic splice-site training dataset in the upstream layout.

    Parameters
    ----------
    out : str or path-like
        Output directory; the dataset goes to ``out/master``.
    n_genes : int, default 1000
        Number of genes (400-1,300 rows each; ~90 % neither, ~5 % donor, ~5 % acceptor).
    seed : int, default 42
        Seed; gene ``i`` is a function of ``(seed, i)`` only (plus its file for N bases).
    kmer_sizes : sequence of int, default (3,)
        K-mer sizes (1..6) whose ``{k}mer_XXX`` counts over the +-50 nt window are written.
    genes_per_file : int, default 100
        Whole genes per ``batch_NNNNN.parquet`` file.
    n_kmer_drift : bool, default True
        With two files or more, put N bases into a few genes of some files (never the first),
        which then carry extra N-containing k-mer columns (schema drift across files).
    overwrite : bool, default False
        Replace ``out/master`` when ``out`` exists and is not empty (otherwise an error).
    progress : callable, optional
        Called as ``progress(files_done, files_total)`` after each file.
    full_body : bool, default False
        Write **every position** of each gene (``position`` 0..L-1, contiguous) instead of
        the upstream sample of rows. Genes are shorter (``gene_length``) but simulated by the
        same code: sequence, base-score landscape (detected and missed sites, decoys, a
        background of low-score local peaks at every GT / AG) and features.
    gene_length : int, default 3000
        With ``full_body``: the mean gene length in nt (each gene draws 0.7-1.3x it).
    labels : bool, default True
        False leaves out the label column and the label-derived bookkeeping columns
        (:data:`UNLABELLED_DROPS`), like data to score with ``metadask predict``; the
        manifest then has no ``n_donor`` / ``n_acceptor`` columns.

    Returns
    -------
    pathlib.Path
        The ``out/master`` directory holding the parquet files and ``gene_manifest.csv``.

    Raises
    ------
    metadask.errors.ConfigError
        An argument is out of range.
    metadask.errors.OutputError
        ``out`` exists and is not empty and ``overwrite`` is false, or is not a directory.

    Notes
    -----
    Files are written atomically (temporary name in the same directory, then rename) with
    pyarrow (snappy, row groups of 25 genes); memory is bounded by one file's genes. The
    same arguments give byte-identical files. Deliberately leaky columns are listed in
    :data:`LEAKY_COLUMNS`, QC flags in :data:`NEAR_CONSTANT_COLUMNS`.

    Examples
    --------
    >>> master = make_dataset("/tmp/synth", n_genes=20, genes_per_file=10)  # doctest: +SKIP
    """
    ks = _validate(n_genes, seed, kmer_sizes, genes_per_file, gene_length)
    master = _prepare_output(pathlib.Path(out), overwrite)
    n_files = -(-n_genes // genes_per_file)
    drift = bool(n_kmer_drift) and n_files >= 2
    length = int(gene_length) if full_body else None
    info = {"format_version": _FORMAT_VERSION, "seed": seed, "n_genes": n_genes,
            "kmer_sizes": list(ks), "genes_per_file": genes_per_file,
            "n_kmer_drift": bool(n_kmer_drift)}
    if full_body:  # only then, so sampled files stay byte-identical to earlier versions
        info["full_body_gene_length"] = length
    if not labels:
        info["labels"] = False
    meta = {b"metadask.synthetic": json.dumps(info, sort_keys=True).encode()}
    manifest: list[tuple[object, ...]] = []
    for fi in range(n_files):
        ids = range(fi * genes_per_file, min(n_genes, (fi + 1) * genes_per_file))
        with_n = _n_genes_of_file(seed, fi, ids, drift)
        genes = [_simulate_gene(seed, i, i in with_n, length) for i in ids]
        n_kmers: dict[int, set[str]] = {k: set() for k in ks}
        for g in genes:
            if g.index in with_n:
                for k in ks:
                    n_kmers[k].update(_kmer_counts(g, k)[1])
        schema = dataset_schema(ks, {k: sorted(v) for k, v in n_kmers.items()},
                                labels=labels).with_metadata(meta)
        name = f"batch_{fi:05d}.parquet"

        def write(tmp: str, genes: list[_Gene] = genes, schema: pa.Schema = schema) -> None:
            with pq.ParquetWriter(tmp, schema, compression="snappy") as writer:
                for start in range(0, len(genes), _ROW_GROUP_GENES):
                    writer.write_table(_table(genes[start:start + _ROW_GROUP_GENES], schema, ks))

        atomic_write(master / name, write)
        for g in genes:
            counts = (int((g.labels == 1).sum()), int((g.labels == 2).sum())) if labels else ()
            manifest.append((g.gene_id, f"synth{g.index + 1}", name, len(g.positions), *counts))
        del genes
        if progress is not None:
            progress(fi + 1, n_files)

    def write_manifest(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["gene_id", "gene_name", "file", "n_rows"]
                       + (["n_donor", "n_acceptor"] if labels else []))
            w.writerows(manifest)

    atomic_write(master / "gene_manifest.csv", write_manifest)
    return master
