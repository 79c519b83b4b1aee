"""``metadask inspect``: what a dataset holds, from footers and one gene-index pass."""

from __future__ import annotations

from typing import Any

from metadask.dataset.index import GeneIndex
from metadask.dataset.memory import format_bytes, matrix_bytes
from metadask.dataset.source import Dataset


def inspect_dataset(dataset: Dataset, index: GeneIndex) -> dict[str, Any]:
    """Genes, rows, files, feature families, label mix, drift and in-memory matrix size."""
    s = dataset.schema
    labels = index.label_counts() if s.has_labels else None
    total = max(1, sum(labels.values())) if labels else 1
    spanning = int((index.table["files"].map(len) > 1).sum())
    size = matrix_bytes(index, len(s.feature_columns))
    contiguous = index.contiguous
    return {
        "dataset": dataset.url,
        "files": len(s.files),
        "genes": index.n_genes,
        "genes_spanning_files": spanning,
        "layout": index.layout,
        "contiguous_genes": None if contiguous is None else int(contiguous.sum()),
        "rows": index.n_rows,
        "rows_per_gene": {
            "min": int(index.table["n_rows"].min()),
            "median": float(index.table["n_rows"].median()),
            "max": int(index.table["n_rows"].max()),
        },
        "label_column": s.label_column,
        "label_encoding": s.label_encoding,
        "gene_column": s.gene_column,
        "labels": labels,
        "label_fractions": None if labels is None else {k: round(v / total, 4) for k, v in labels.items()},
        "features": len(s.feature_columns),
        "feature_families": s.family_counts(),
        "metadata_columns": list(s.metadata_columns),
        "schema_drift": {
            "kmer_columns_missing_in_some_files": len(s.drift),
            "columns": sorted(s.drift)[:50],
            "files_affected": len({f for fs in s.drift.values() for f in fs}),
        },
        "training_matrix_bytes": size,
        "training_matrix": format_bytes(size),
    }


def format_inspection(info: dict[str, Any]) -> str:
    """The inspection as aligned text lines."""
    fam = ", ".join(f"{k} {v}" for k, v in info["feature_families"].items())
    labels = (
        f"none (no '{info['label_column']}' column: data to score)"
        if info["labels"] is None
        else ", ".join(f"{k} {v:,} ({info['label_fractions'][k]:.1%})" for k, v in info["labels"].items())
        + f"  [column '{info['label_column']}', {info['label_encoding']}]"
    )
    drift = info["schema_drift"]
    drift_line = (
        "none"
        if not drift["kmer_columns_missing_in_some_files"]
        else f"{drift['kmer_columns_missing_in_some_files']} k-mer columns missing in {drift['files_affected']} files (read as 0)"
    )
    rpg = info["rows_per_gene"]
    layout = {
        "full-body": "full-body (every position of each gene: positions contiguous per gene)",
        "sampled": f"sampled ({info.get('contiguous_genes')} of {info['genes']} genes contiguous)",
    }.get(info.get("layout", "unknown"), "unknown (no 'position' column)")
    lines = [
        f"Dataset:          {info['dataset']}",
        f"Files:            {info['files']}",
        f"Genes:            {info['genes']:,} ({info['genes_spanning_files']} span several files)",
        f"Layout:           {layout}",
        f"Rows:             {info['rows']:,} (per gene: min {rpg['min']}, median {rpg['median']:.0f}, max {rpg['max']})",
        f"Labels:           {labels}",
        f"Features:         {info['features']:,} ({fam})",
        f"Metadata columns: {len(info['metadata_columns'])}",
        f"Schema drift:     {drift_line}",
        f"Training matrix:  {info['training_matrix']} in memory (float32, rows x features)",
    ]
    return "\n".join(lines)
