"""Datasets in object storage: a real S3-compatible server (moto) on loopback, read by s3fs.

The synthetic dataset is uploaded with boto3; metadask then opens it as
``s3://bucket/prefix`` with storage options naming the endpoint and credentials, and the
Dask workers of the session cluster (separate processes) read their files from the server
themselves. Everything must match what the same dataset gives from local disk.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from metadask.cluster import workers_info
from metadask.dataset import build_gene_index, inspect_dataset, open_dataset, read_sample, representative_genes
from metadask.errors import DatasetError

BUCKET = "splice-data"
PREFIX = "datasets/tiny_s3"
KEY, SECRET = "testing-key", "testing-secret"


@pytest.fixture(scope="module")
def s3_endpoint():
    """``http://127.0.0.1:PORT`` of a moto S3 server running in this process."""
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def local_dataset(tmp_path_factory) -> Path:
    from metadask.testing import make_dataset

    out = tmp_path_factory.mktemp("s3-source") / "tiny_s3"
    make_dataset(out, 20, seed=5, genes_per_file=5)
    return out


@pytest.fixture(scope="module")
def s3_url(s3_endpoint, local_dataset) -> str:
    """The synthetic dataset uploaded to ``s3://BUCKET/PREFIX`` (upstream layout: master/*.parquet)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                      region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    files = sorted((local_dataset / "master").glob("*.parquet"))
    assert len(files) == 4
    for f in files:
        s3.upload_file(str(f), BUCKET, f"{PREFIX}/master/{f.name}")
    s3.upload_file(str(local_dataset / "master" / "gene_manifest.csv"), BUCKET, f"{PREFIX}/master/gene_manifest.csv")
    return f"s3://{BUCKET}/{PREFIX}"


@pytest.fixture
def storage_options(s3_endpoint):
    return {"client_kwargs": {"endpoint_url": s3_endpoint}, "key": KEY, "secret": SECRET}


def test_an_s3_dataset_opens_with_the_same_files_and_schema_as_on_disk(s3_url, storage_options, local_dataset):
    remote = open_dataset(s3_url, storage_options=storage_options)
    local = open_dataset(local_dataset)
    assert [f.rsplit("/", 1)[1] for f in remote.files] == [Path(f).name for f in local.files]
    assert all(f.startswith(f"{s3_url}/master/") for f in remote.files)
    assert remote.schema.columns == local.schema.columns
    assert remote.schema.feature_columns == local.schema.feature_columns
    assert remote.schema.n_rows == local.schema.n_rows
    assert {c: len(fs) for c, fs in remote.schema.drift.items()} == {c: len(fs) for c, fs in local.schema.drift.items()}


def test_workers_build_the_gene_index_from_s3(client, s3_url, storage_options, local_dataset):
    from distributed import get_task_stream

    remote = open_dataset(s3_url, storage_options=storage_options)
    with get_task_stream(client) as stream:
        index = build_gene_index(remote)  # one task per file, on the session cluster's worker processes
    expected = build_gene_index(open_dataset(local_dataset))
    pd.testing.assert_frame_equal(index.table, expected.table)
    assert index.files == remote.files
    ran_on = {t["worker"] for t in stream.data if "metadask-index-" in str(t["key"])}
    assert ran_on and ran_on <= set(workers_info(client))


def test_representative_sample_from_s3_equals_the_local_one(client, s3_url, storage_options, local_dataset):
    remote = open_dataset(s3_url, storage_options=storage_options)
    local = open_dataset(local_dataset)
    r_index, l_index = build_gene_index(remote), build_gene_index(local)
    genes = representative_genes(r_index, 0.3, seed=1)
    assert genes == representative_genes(l_index, 0.3, seed=1) and len(genes) == 6
    columns = ["splice_type", "donor_score", "acceptor_score", "position"]
    got = read_sample(remote, r_index, genes, columns)
    want = read_sample(local, l_index, genes, columns)
    pd.testing.assert_frame_equal(got, want)
    assert sorted(got["gene_id"].unique()) == genes


def test_a_worker_reads_its_genes_matrix_from_s3(client, s3_url, storage_options, local_dataset):
    import numpy as np

    remote = open_dataset(s3_url, storage_options=storage_options)
    local = open_dataset(local_dataset)
    genes = sorted(build_gene_index(local).genes)[:3]
    features = list(local.schema.feature_columns)[:10]
    x_remote, meta_remote = client.submit(remote.read_matrix, genes, features, pure=False).result()
    x_local, meta_local = local.read_matrix(genes, features)
    np.testing.assert_array_equal(x_remote, x_local)
    pd.testing.assert_frame_equal(meta_remote, meta_local)


def test_metadask_inspect_reads_an_s3_dataset_with_storage_options(s3_url, s3_endpoint, local_dataset):
    from metadask.cli import main

    result = CliRunner().invoke(main, [
        "inspect", s3_url, "--json",
        "--storage-option", f"endpoint_url={s3_endpoint}",
        "--storage-option", f"key={KEY}", "--storage-option", f"secret={SECRET}",
    ])
    assert result.exit_code == 0, (result.output, result.exception)
    info = json.loads(result.output)
    expected = inspect_dataset(local := open_dataset(local_dataset), build_gene_index(local))
    assert info["dataset"] == s3_url
    for key in ("files", "genes", "rows", "labels", "features", "feature_families", "schema_drift", "training_matrix_bytes"):
        assert info[key] == expected[key], key


def test_a_missing_s3_prefix_is_a_clear_dataset_error(s3_url, storage_options):
    missing = f"s3://{BUCKET}/no/such/prefix"
    start = time.monotonic()
    with pytest.raises(DatasetError, match=f"'{missing}' does not exist"):
        open_dataset(missing, storage_options=storage_options)
    assert time.monotonic() - start < 20


def test_metadask_inspect_of_a_missing_s3_prefix_exits_2_with_one_line(s3_url, s3_endpoint):
    from metadask.cli import main

    result = CliRunner().invoke(main, [
        "inspect", f"s3://{BUCKET}/nothing-here",
        "--storage-option", f"endpoint_url={s3_endpoint}",
        "--storage-option", f"key={KEY}", "--storage-option", f"secret={SECRET}",
    ])
    assert result.exit_code == 2
    assert result.output.startswith("metadask: error: Dataset path 's3://splice-data/nothing-here' does not exist")
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def small_s3(s3_endpoint, tmp_path_factory) -> tuple[str, Path]:
    """A 12-gene, 1-mer dataset uploaded to ``s3://BUCKET/datasets/small``: (url, local copy)."""
    import boto3

    from metadask.testing import make_dataset

    local = tmp_path_factory.mktemp("s3-small") / "small"
    make_dataset(local, 12, seed=5, genes_per_file=4, kmer_sizes=(1,))
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                      region_name="us-east-1")
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    for f in sorted((local / "master").iterdir()):
        s3.upload_file(str(f), BUCKET, f"datasets/small/master/{f.name}")
    return f"s3://{BUCKET}/datasets/small", local


# ~20-40 s on a shared 2-core machine: train and predict, both reading on the workers from the moto server
def test_training_and_prediction_read_an_s3_dataset_on_the_workers(client, small_s3, storage_options, tmp_path):
    import numpy as np

    import metadask
    from metadask.inference import predict_dataset

    s3_url, local_dataset = small_s3
    result = metadask.train(s3_url, tmp_path / "run", client=client, storage_options=storage_options,
                            n_folds=2, n_estimators=5, analysis=False)
    assert (tmp_path / "run" / "model").is_dir()
    n_rows = open_dataset(s3_url, storage_options=storage_options).schema.n_rows
    assert len(result.oof) == n_rows
    summary = (tmp_path / "run" / "training_summary.txt").read_text()
    assert KEY not in summary and SECRET not in summary  # credentials never reach the artifacts
    assert not any(SECRET in p.read_text(errors="ignore") for p in (tmp_path / "run").rglob("*") if p.is_file()
                   and p.suffix in (".json", ".txt", ".csv", ".md", ".yaml"))

    written = predict_dataset(tmp_path / "run" / "model", s3_url, tmp_path / "pred", client=client,
                              storage_options=storage_options)
    assert written == n_rows
    preds = pd.read_parquet(tmp_path / "pred")
    local = pd.concat([pd.read_parquet(f) for f in sorted((local_dataset / "master").glob("*.parquet"))])
    keys = ["gene_id", "position"]
    probs = ["prob_neither", "prob_donor", "prob_acceptor"]
    merged = preds[keys + probs].merge(local, on=keys, how="inner", validate="one_to_one")
    assert len(merged) == n_rows
    model = metadask.load_model(tmp_path / "run" / "model")
    expected = model.predict_proba(merged)
    np.testing.assert_allclose(merged[probs].to_numpy(), expected,
                               rtol=1e-6, atol=1e-9)
