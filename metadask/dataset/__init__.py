"""Reading gene-grouped parquet datasets: schema, gene index, samples, memory estimates."""

from metadask.dataset.index import GeneIndex, build_gene_index
from metadask.dataset.inspect import format_inspection, inspect_dataset
from metadask.dataset.memory import format_bytes, matrix_bytes
from metadask.dataset.sample import read_sample, representative_genes
from metadask.dataset.sampling import SamplingRules, sample_gene_rows, write_sampled_dataset
from metadask.dataset.schema import BASE_SCORE_COLUMNS, LABEL_CODES, LABELS, METADATA_COLUMNS, Schema
from metadask.dataset.source import Dataset, open_dataset

__all__ = [
    "BASE_SCORE_COLUMNS",
    "Dataset",
    "GeneIndex",
    "LABELS",
    "LABEL_CODES",
    "METADATA_COLUMNS",
    "SamplingRules",
    "Schema",
    "build_gene_index",
    "format_bytes",
    "format_inspection",
    "inspect_dataset",
    "matrix_bytes",
    "open_dataset",
    "read_sample",
    "representative_genes",
    "sample_gene_rows",
    "write_sampled_dataset",
]
