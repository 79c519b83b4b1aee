"""Kubernetes: the deploy manifests and the DaskCluster spec metadask builds (no live cluster).

Manifests are validated against the custom resource schemas that dask-kubernetes ships
(its Helm chart's CRDs), strictly: unknown fields are errors, as with
``kubectl apply --validate=strict``. Those tests skip when dask-kubernetes (the
``metadask[kubernetes]`` extra) or jsonschema is not installed.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from dask.utils import parse_bytes

from metadask.cluster import connect, k8s_quantity, kubernetes_cluster_spec
from metadask.errors import ClusterError, ConfigError

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"


def load_manifests(name: str) -> list[dict[str, Any]]:
    with open(DEPLOY / name) as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env") or []}


def arg_after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def _strict(schema: Any) -> Any:
    """An openAPIV3Schema as JSON Schema that rejects unknown fields (Kubernetes prunes them)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def crd_validators():
    """kind -> a jsonschema validator for that DaskCluster/DaskJob/... resource."""
    jsonschema = pytest.importorskip("jsonschema")
    from importlib.util import find_spec

    package = find_spec("dask_kubernetes")  # located, not imported (importing it takes seconds)
    if package is None or package.origin is None:
        pytest.skip("dask-kubernetes is not installed (pip install 'metadask[kubernetes]')")
    crds = Path(package.origin).parent / "operator" / "deployment" / "helm" / "dask-kubernetes-operator" / "crds"
    if not crds.is_dir():
        pytest.skip(f"this dask-kubernetes does not ship its CRDs at {crds}")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are ~18k lines of YAML
    validators = {}
    for crd_file in sorted(crds.glob("*.yaml")):
        crd = yaml.load(crd_file.read_text(), Loader=loader)  # noqa: S506 - a safe loader
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
        # apiVersion / kind / metadata are checked by the API server itself, not by the CRD
        schema["properties"].update({"apiVersion": {"const": f"{crd['spec']['group']}/v1"},
                                     "kind": {"const": crd["spec"]["names"]["kind"]},
                                     "metadata": {"type": "object"}})
        schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
        validators[crd["spec"]["names"]["kind"]] = jsonschema.Draft7Validator(schema)
    assert {"DaskCluster", "DaskJob"} <= set(validators)
    return validators


def schema_errors(validators, doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validators[doc["kind"]].iter_errors(doc)]


# -- the deploy/ manifests ------------------------------------------------------------------
def test_deploy_manifests_parse_as_yaml():
    cluster_docs = load_manifests("daskcluster.yaml")
    job_docs = load_manifests("daskjob.yaml")
    assert [d["kind"] for d in cluster_docs] == ["DaskCluster"]
    assert sorted(d["kind"] for d in job_docs) == ["DaskJob", "PersistentVolumeClaim"]
    for doc in cluster_docs + job_docs:
        assert doc["metadata"]["namespace"] == "metadask"


@pytest.mark.parametrize("name", ["daskcluster.yaml", "daskjob.yaml"])
def test_deploy_manifests_validate_against_the_operator_crds(crd_validators, name):
    for doc in load_manifests(name):
        if doc["apiVersion"].startswith("kubernetes.dask.org/"):
            assert schema_errors(crd_validators, doc) == []


def test_strict_crd_validation_rejects_a_misspelt_field(crd_validators):
    doc = by_kind(load_manifests("daskcluster.yaml"), "DaskCluster")
    doc["spec"]["worker"]["replica"] = doc["spec"]["worker"].pop("replicas")
    errors = schema_errors(crd_validators, doc)
    assert any("replica" in e for e in errors)


def test_strict_crd_validation_rejects_an_unquoted_cpu_request(crd_validators):
    doc = by_kind(load_manifests("daskcluster.yaml"), "DaskCluster")
    doc["spec"]["worker"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = 4
    assert any("cpu" in e for e in schema_errors(crd_validators, doc))


def _check_worker_container(worker: dict[str, Any]) -> None:
    args = worker["args"]
    assert args[:2] == ["dask", "worker"]
    requests, limits = worker["resources"]["requests"], worker["resources"]["limits"]
    assert arg_after(args, "--nthreads") == requests["cpu"]
    assert parse_bytes(arg_after(args, "--memory-limit")) == parse_bytes(limits["memory"]) == parse_bytes(requests["memory"])
    assert "cpu" not in limits  # CPU throttling stalls XGBoost's OpenMP threads
    assert env_of(worker)["OMP_WAIT_POLICY"] == "PASSIVE"


def test_daskcluster_manifest_workers_match_their_resources():
    doc = by_kind(load_manifests("daskcluster.yaml"), "DaskCluster")
    (worker,) = doc["spec"]["worker"]["spec"]["containers"]
    _check_worker_container(worker)
    (scheduler,) = doc["spec"]["scheduler"]["spec"]["containers"]
    assert scheduler["image"] == worker["image"]
    assert doc["spec"]["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == doc["metadata"]["name"]


def test_daskjob_manifest_runs_metadask_train_against_the_injected_scheduler():
    docs = load_manifests("daskjob.yaml")
    job = by_kind(docs, "DaskJob")
    (runner,) = job["spec"]["job"]["spec"]["containers"]
    args = runner["args"]
    assert args[:2] == ["metadask", "train"]
    assert arg_after(args, "--dataset").startswith("s3://")
    assert arg_after(args, "--out-dir").startswith("/output/")
    # the operator injects DASK_SCHEDULER_ADDRESS; an explicit address would override it
    assert "--scheduler" not in args and "DASK_SCHEDULER_ADDRESS" not in env_of(runner)
    assert job["spec"]["job"]["spec"]["restartPolicy"] == "Never"
    assert runner["resources"]["requests"]["memory"]
    (mount,) = runner["volumeMounts"]
    (volume,) = job["spec"]["job"]["spec"]["volumes"]
    assert mount["name"] == volume["name"] and mount["mountPath"] == "/output"
    assert volume["persistentVolumeClaim"]["claimName"] == by_kind(docs, "PersistentVolumeClaim")["metadata"]["name"]
    workers = job["spec"]["cluster"]["spec"]["worker"]
    assert int(arg_after(args, "--min-workers")) == workers["replicas"]
    (worker,) = workers["spec"]["containers"]
    _check_worker_container(worker)
    assert worker["image"] == runner["image"]
    # the operator names the cluster after the job
    assert job["spec"]["cluster"]["spec"]["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == job["metadata"]["name"]


def test_dockerfile_installs_metadask_from_the_repository_into_python_3_11_slim():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert 'pip install ".[${METADASK_EXTRAS}]"' in text
    assert "OMP_WAIT_POLICY=PASSIVE" in text
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert "*" in ignore and "!metadask/" in ignore and "!pyproject.toml" in ignore


# -- the spec metadask builds -----------------------------------------------------------------
def test_kubernetes_cluster_spec_has_the_options_asked_for():
    spec = kubernetes_cluster_spec("metadask-run1", "registry.example/metadask:0.1.0", 6, "8GiB", "genomics",
                                   worker_threads=4, env={"AWS_REGION": "eu-west-1"})
    assert spec["apiVersion"] == "kubernetes.dask.org/v1" and spec["kind"] == "DaskCluster"
    assert spec["metadata"]["name"] == "metadask-run1"
    assert spec["metadata"]["namespace"] == "genomics"
    worker_group = spec["spec"]["worker"]
    assert worker_group["replicas"] == 6
    (worker,) = worker_group["spec"]["containers"]
    assert worker["image"] == "registry.example/metadask:0.1.0"
    assert worker["resources"] == {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}
    assert arg_after(worker["args"], "--nthreads") == "4"
    assert int(arg_after(worker["args"], "--memory-limit")) == 8 * 2**30
    assert env_of(worker) == {"OMP_WAIT_POLICY": "PASSIVE", "AWS_REGION": "eu-west-1"}
    (scheduler,) = spec["spec"]["scheduler"]["spec"]["containers"]
    assert scheduler["image"] == worker["image"]
    assert "OMP_WAIT_POLICY" not in env_of(scheduler) and env_of(scheduler)["AWS_REGION"] == "eu-west-1"
    assert spec["spec"]["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == "metadask-run1"


def test_kubernetes_cluster_spec_validates_against_the_operator_crd(crd_validators):
    spec = kubernetes_cluster_spec("metadask-run1", "metadask:0.1.0", 2, "4Gi", "default")
    assert schema_errors(crd_validators, spec) == []


def test_kubernetes_cluster_spec_without_dask_kubernetes_has_the_same_shape():
    pytest.importorskip("dask_kubernetes.operator")
    args = ("metadask-x", "metadask:0.1.0", 3, "2Gi", "ns-1")
    with_operator = kubernetes_cluster_spec(*args, use_operator=True)
    without = kubernetes_cluster_spec(*args, use_operator=False)
    assert without == with_operator


def test_kubernetes_cluster_spec_takes_worker_env_from_dask_config():
    import dask.config

    with dask.config.set({"metadask.worker-env": {"OMP_WAIT_POLICY": "PASSIVE", "MALLOC_TRIM_THRESHOLD_": "65536"}}):
        spec = kubernetes_cluster_spec("m", "metadask:0.1.0", 1, "1Gi")
    assert env_of(spec["spec"]["worker"]["spec"]["containers"][0])["MALLOC_TRIM_THRESHOLD_"] == "65536"
    assert "namespace" not in spec["metadata"]


@pytest.mark.parametrize(("value", "expected"), [("8Gi", "8Gi"), ("8GiB", "8Gi"), ("512MiB", "512Mi"),
                                                 ("1.5Gi", "1536Mi"), (2**30, "1Gi"), ("8GB", "8G"), (1000, "1k"), (1234567, "1234567")])
def test_memory_sizes_become_kubernetes_quantities(value, expected):
    assert k8s_quantity(value) == expected


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"image": ""}, "k8s_image.*--k8s-image"),
    ({"namespace": "Genomics_Lab"}, "k8s_namespace.*Kubernetes name"),
    ({"worker_memory": "lots"}, "k8s_worker_memory.*--k8s-worker-memory 8Gi"),
    ({"n_workers": 0}, "k8s_workers.*>= 1"),
])
def test_kubernetes_cluster_spec_rejects_bad_options_with_the_fix(kwargs, match):
    args = {"name": "m", "image": "metadask:0.1.0", "n_workers": 2, "worker_memory": "4Gi", "namespace": "default", **kwargs}
    with pytest.raises(ConfigError, match=match):
        kubernetes_cluster_spec(**args)


# -- connect(cluster="kubernetes") without a live cluster -------------------------------------------
def test_kubernetes_cluster_without_dask_kubernetes_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_kubernetes", None)
    monkeypatch.setitem(sys.modules, "dask_kubernetes.operator", None)
    with pytest.raises(ClusterError, match=r"pip install 'metadask\[kubernetes\]'"):
        with connect(cluster="kubernetes", k8s_image="metadask:0.1.0", k8s_workers=1, k8s_worker_memory="1Gi"):
            pass


def test_kubernetes_cluster_without_cluster_access_fails_clearly(monkeypatch, tmp_path):
    pytest.importorskip("dask_kubernetes.operator")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ClusterError, match="Cannot start the Kubernetes Dask cluster 'metadask-.*namespace 'ns1'.*KUBECONFIG"):
        with connect(cluster="kubernetes", k8s_image="metadask:0.1.0", k8s_workers=1, k8s_worker_memory="1Gi",
                     k8s_namespace="ns1"):
            pass


def test_kubernetes_options_without_cluster_kubernetes_are_rejected():
    with pytest.raises(ConfigError, match="--k8s-image, --k8s-workers only apply with --cluster kubernetes"):
        with connect(k8s_image="metadask:0.1.0", k8s_workers=2):
            pass


def test_scheduler_and_cluster_kubernetes_are_mutually_exclusive():
    with pytest.raises(ConfigError, match="--scheduler cannot be combined with --cluster kubernetes"):
        with connect(scheduler="tcp://127.0.0.1:8786", cluster="kubernetes"):
            pass
