"""The bad-input catalogue: malformed datasets, options and model bundles through the CLI.

Every case runs ``metadask train`` or ``metadask predict`` in-process (click's CliRunner)
and must give exit status 2, exactly one ``metadask: error:`` line on stderr (its last line)
naming the problem and the fix (a regex per case), no traceback, and leave everything the
user had untouched: every file under the case's folder (datasets, model bundles, an earlier
run) keeps its bytes and modification time. A new ``--out-dir`` may only appear as a run
marked incomplete (``RUN_INCOMPLETE``).

Datasets are tiny frames written with pyarrow; the model bundle is three boosters trained
in-process with xgboost and saved with :func:`metadask.models.bundle.save_model`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from metadask.cli import main

LABEL_NAMES = ("neither", "donor", "acceptor")
KMERS = ("3mer_AAA", "3mer_ACG")
FEATURES = ("neither_score", "donor_score", "acceptor_score", "feat_a", "feat_b", *KMERS)


# -- inputs -------------------------------------------------------------------------------


def gene_rows(gene: str, n: int = 12, *, start: int = 0, strand: str = "+", chrom: str = "chr1") -> pd.DataFrame:
    """Rows ``start ..`` of a gene whose positions 0 and 1 are a donor and an acceptor."""
    rng = np.random.default_rng([sum(map(ord, gene)), start])
    pos = np.arange(start, start + n)
    codes = np.where(pos == 0, 1, np.where(pos == 1, 2, 0))
    scores = rng.dirichlet(np.ones(3), size=n)
    df = pd.DataFrame({
        "gene_id": gene, "chrom": chrom, "strand": strand, "position": pos,
        "splice_type": np.asarray(LABEL_NAMES, dtype=object)[codes],
        "neither_score": scores[:, 0], "donor_score": scores[:, 1], "acceptor_score": scores[:, 2],
        "feat_a": rng.normal(size=n), "feat_b": rng.normal(size=n),
    })
    for k in KMERS:
        df[k] = rng.integers(0, 5, size=n)
    return df


def frame(*genes: str, **kw) -> pd.DataFrame:
    return pd.concat([gene_rows(g, **kw) for g in genes], ignore_index=True)


def write(path: Path, df: pd.DataFrame | pa.Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(table, path)
    return path


def good_dataset(root: Path, n_genes: int = 6) -> Path:
    """A valid dataset: ``n_genes`` genes in two files."""
    genes = [f"G{i}" for i in range(n_genes)]
    half = n_genes // 2
    write(root / "ds" / "batch_00000.parquet", frame(*genes[:half]))
    write(root / "ds" / "batch_00001.parquet", frame(*genes[half:]))
    return root / "ds"


def bundle_digest(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def edit_manifest(model: Path, change: Callable[[dict], None], *, redigest: bool) -> None:
    """Change the manifest; with ``redigest`` also fix its checksum (a deliberate forgery)."""
    mf = json.loads((model / "manifest.json").read_text())
    change(mf)
    if redigest:
        mf["manifest_sha256"] = bundle_digest(mf)
    (model / "manifest.json").write_text(json.dumps(mf, indent=1))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model bundle over FEATURES (boosters trained in-process, no cluster)."""
    import xgboost as xgb

    from metadask.models.boosted import BoosterModel
    from metadask.models.bundle import save_model

    df = frame(*(f"G{i}" for i in range(6)))
    x = df[list(FEATURES)].to_numpy(np.float32)
    boosters = [xgb.train({"nthread": 1, "seed": 0}, xgb.DMatrix(x, label=(df["splice_type"] == c).to_numpy()), 3)
                for c in LABEL_NAMES]
    out = tmp_path_factory.mktemp("bundle") / "model"
    save_model(BoosterModel(boosters, FEATURES), out, strategy="single")
    return out


# -- the catalogue --------------------------------------------------------------------------


@dataclass
class Env:
    root: Path
    scheduler: str
    bundle: Path

    def train(self, dataset: Path | str, *extra: str, out: str = "out") -> list[str]:
        return ["train", "--dataset", str(dataset), "--out-dir", str(self.root / out), "--n-folds", "2",
                "--n-estimators", "5", "--no-analysis", "--scheduler", self.scheduler, *extra]

    def model(self) -> Path:
        """A private copy of the bundle, inside the case's folder (so it is watched too)."""
        return Path(shutil.copytree(self.bundle, self.root / "model"))

    def predict(self, model: Path | str, dataset: Path | None = None, *extra: str) -> list[str]:
        dataset = dataset if dataset is not None else good_dataset(self.root)
        return ["predict", "--model", str(model), "--dataset", str(dataset), "--out", str(self.root / "pred.parquet"),
                "--scheduler", self.scheduler, *extra]


def _corrupt(kind: str) -> Callable[[Env], list[str]]:
    def make(env: Env) -> list[str]:
        ds = good_dataset(env.root)
        bad = ds / "batch_00001.parquet"
        data = bad.read_bytes()
        bad.write_bytes({"random": np.random.default_rng(0).bytes(4000), "truncated": data[: len(data) // 2],
                         "empty": b""}[kind])
        return env.train(ds)
    return make


def _dataset(df_or_frames, **kw) -> Callable[[Env], list[str]]:
    """A case whose dataset is the given frame(s) (a callable making them)."""
    def make(env: Env) -> list[str]:
        frames = df_or_frames()
        frames = frames if isinstance(frames, list) else [frames]
        for i, f in enumerate(frames):
            write(env.root / "ds" / f"batch_{i:05d}.parquet", f)
        return env.train(env.root / "ds", *kw.get("extra", ()))
    return make


def _with(col: str, rows: list[int], value, *genes: str) -> Callable[[], pd.DataFrame]:
    def make() -> pd.DataFrame:
        df = frame(*(genes or ("G0", "G1", "G2", "G3")))
        if value is None:
            df[col] = df[col].astype(object)
        df.loc[rows, col] = value
        return df
    return make


def _labels(values: dict[int, object], ints: bool = False) -> Callable[[], pd.DataFrame]:
    def make() -> pd.DataFrame:
        df = frame("G0", "G1", "G2", "G3")
        if ints:
            df["splice_type"] = df["splice_type"].map({n: i for i, n in enumerate(LABEL_NAMES)})
        for i, v in values.items():
            df.loc[i, "splice_type"] = v
        return df
    return make


def _single_class() -> pd.DataFrame:
    df = frame("G0", "G1", "G2", "G3")
    df["splice_type"] = "neither"
    return df


def _duplicated_rows() -> pd.DataFrame:
    df = frame("G0", "G1", "G2", "G3")
    return pd.concat([df, df.iloc[[15]]], ignore_index=True)  # G1 position 3 twice


def _duplicated_across_files() -> list[pd.DataFrame]:
    # G1 spans two files and both hold its position 5
    return [pd.concat([frame("G0"), gene_rows("G1", 8)], ignore_index=True),
            pd.concat([gene_rows("G1", 6, start=5), frame("G2", "G3")], ignore_index=True)]


def _strand_disagrees() -> pd.DataFrame:
    df = frame("G0", "G1", "G2", "G3")
    df.loc[(df["gene_id"] == "G2") & (df["position"] > 6), "strand"] = "-"
    return df


def _chrom_disagrees_across_files() -> list[pd.DataFrame]:
    return [pd.concat([frame("G0"), gene_rows("G1", 6)], ignore_index=True),
            pd.concat([gene_rows("G1", 6, start=6, chrom="chr2"), frame("G2", "G3")], ignore_index=True)]


def _with_extra_column(name: str) -> Callable[[], pa.Table]:
    """The frame plus a column called ``name`` (arrow allows blank and repeated names)."""
    def make() -> pa.Table:
        df = frame("G0", "G1", "G2", "G3")
        arrays = [pa.array(df[c]) for c in df.columns] + [pa.array(np.ones(len(df)))]
        return pa.Table.from_arrays(arrays, names=[*df.columns, name])
    return make


def _string_feature() -> pd.DataFrame:
    df = frame("G0", "G1")
    df["chromatin_state"] = "open"
    return df


def _conflicting_types() -> list[pd.DataFrame]:
    b = frame("G2", "G3")
    b["feat_a"] = b["feat_a"].astype(str)
    return [frame("G0", "G1"), b]


def _column_missing_from_a_file() -> list[pd.DataFrame]:
    return [frame("G0", "G1"), frame("G2", "G3").drop(columns=["feat_b"])]


def _existing_run(env: Env) -> list[str]:
    ds = good_dataset(env.root)
    (env.root / "out" / "model").mkdir(parents=True)
    (env.root / "out" / "training_summary.txt").write_text("an earlier run\n")
    (env.root / "out" / "model" / "manifest.json").write_text("{}")
    return env.train(ds)


def _unreachable(env: Env) -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = env.train(good_dataset(env.root))
    args[args.index("--scheduler") + 1] = f"tcp://127.0.0.1:{port}"
    return [*args, "--connect-timeout", "2"]


def _empty_dir(env: Env) -> list[str]:
    (env.root / "empty").mkdir()
    return env.train(env.root / "empty")


def _not_a_bundle(env: Env) -> list[str]:
    (env.root / "notamodel").mkdir()
    (env.root / "notamodel" / "model.pkl").write_bytes(b"not a bundle")
    return env.predict(env.root / "notamodel")


def _option(*extra: str) -> Callable[[Env], list[str]]:
    return lambda env: env.train(good_dataset(env.root), *extra)


def _predict_model(change: Callable[[Path], object]) -> Callable[[Env], list[str]]:
    def make(env: Env) -> list[str]:
        model = env.model()
        change(model)
        return env.predict(model)
    return make


def _booster(model: Path) -> Path:
    return sorted((model / "boosters").glob("*.ubj"))[0]


def _forge_file(model: Path, name: str, data: bytes) -> None:
    """Write ``name`` inside the bundle and list it in the manifest with a valid checksum."""
    (model / name).parent.mkdir(parents=True, exist_ok=True)
    (model / name).write_bytes(data)
    edit_manifest(model, lambda m: m["files"].__setitem__(name, hashlib.sha256(data).hexdigest()), redigest=True)


def _lacking_feature(env: Env) -> list[str]:
    ds = env.root / "ds"
    write(ds / "p.parquet", frame("G0", "G1", "G2").drop(columns=["feat_b"]))
    return env.predict(env.model(), ds)


def _predict_out_exists(env: Env) -> list[str]:
    (env.root / "pred.parquet").write_bytes(b"earlier predictions")
    return env.predict(env.model())


def _manifest(change: Callable[[dict], object], *, redigest: bool = True) -> Callable[[Env], list[str]]:
    return _predict_model(lambda m: edit_manifest(m, change, redigest=redigest))


# id -> (make the inputs and return the CLI arguments, regex the error line must match)
CASES: dict[str, tuple[Callable[[Env], list[str]], str]] = {
    # -- dataset: paths and files
    "dataset/nonexistent-path": (
        lambda env: env.train(env.root / "nowhere"), r"'.*nowhere' does not exist"),
    "dataset/empty-directory": (
        _empty_dir, r"No parquet files in '.*empty'"),
    "dataset/corrupt-parquet": (
        _corrupt("random"), r"'.*batch_00001\.parquet' is not a readable parquet file"),
    "dataset/truncated-parquet": (
        _corrupt("truncated"), r"'.*batch_00001\.parquet' is not a readable parquet file"),
    "dataset/empty-file": (
        _corrupt("empty"), r"'.*batch_00001\.parquet' is not a readable parquet file \(0 bytes"),
    # -- dataset: schema
    "dataset/no-label-column": (
        _dataset(lambda: frame("G0", "G1").drop(columns=["splice_type"])),
        r"No label column 'splice_type'.*--label-column"),
    "dataset/no-gene-column": (
        _dataset(lambda: frame("G0", "G1").drop(columns=["gene_id"])), r"No gene column 'gene_id'.*--gene-column"),
    "dataset/string-feature": (
        _dataset(_string_feature), r"Feature columns hold strings: chromatin_state.*numeric"),
    "dataset/conflicting-types": (
        _dataset(_conflicting_types), r"Column types conflict between files: feat_a"),
    "dataset/column-missing-from-a-file": (
        _dataset(_column_missing_from_a_file), r"Columns missing from some files: feat_b .*batch_00001"),
    "dataset/blank-column-name": (
        _dataset(_with_extra_column("")), r"has a column with a blank name.*Give every column a name"),
    "dataset/repeated-column-name": (
        _dataset(_with_extra_column("feat_a")), r"has repeated column names: feat_a.*unique"),
    # -- dataset: values
    "dataset/unknown-string-labels": (
        _dataset(_labels({2: "intron", 3: "intron", 20: "exon"})),
        r"'splice_type' has unknown values: 'intron' \(2 rows\), 'exon' \(1 rows\)"),
    "dataset/integer-labels-outside-0-1-2": (
        _dataset(_labels({2: 3, 5: -1}, ints=True)), r"'splice_type' has values outside 0/1/2: .*3 \(1 rows\)"),
    "dataset/null-labels": (
        _dataset(_with("splice_type", [4, 5], None)), r"'splice_type' has 2 null values"),
    "dataset/null-genes": (
        _dataset(_with("gene_id", [1, 3], None)), r"Gene column 'gene_id' has 2 null values in '.*batch"),
    "dataset/single-class": (
        _dataset(_single_class), r"Class donor, acceptor has no rows in the training data"),
    "dataset/fewer-genes-than-folds": (
        _dataset(lambda: frame("G0", "G1", "G2"), extra=("--n-folds", "4")), r"n_folds.*3 genes"),
    "dataset/duplicated-rows": (
        _dataset(_duplicated_rows), r"1 duplicated rows \(same gene and position\): G1 at 3"),
    "dataset/duplicated-rows-across-files": (
        _dataset(_duplicated_across_files), r"duplicated rows \(same gene and position\): G1 at 5"),
    "dataset/gene-disagrees-on-strand": (
        _dataset(_strand_disagrees), r"disagree on 'strand'.*G2 \(e\.g\. G2: \+, -\)"),
    "dataset/gene-disagrees-on-chrom-across-files": (
        _dataset(_chrom_disagrees_across_files), r"Gene G1 has rows in 2 files that disagree on 'chrom' \(chr1 in"),
    "dataset/nan-base-score": (
        _dataset(_with("donor_score", [7], np.nan)), r"Base-model score column 'donor_score' has 1 missing \(NaN\)"),
    "dataset/huge-negative-base-score": (
        _dataset(_with("acceptor_score", [3, 9], -1e30)), r"'acceptor_score' has 2 values outside \[0, 1\] .*min -1e\+30"),
    "dataset/infinite-base-score": (
        _dataset(_with("donor_score", [0, 13, 30], np.inf)), r"'donor_score' has 3 values outside \[0, 1\] .*max inf"),
    # -- options
    "option/n-folds-1": (
        _option("--n-folds", "1"), r"'n_folds' option must be an integer >= 2 \(found 1\)"),
    "option/zero-estimators": (
        _option("--n-estimators", "0"), r"'n_estimators' option must be an integer >= 1 \(found 0\)"),
    "option/negative-estimators": (
        _option("--n-estimators", "-5"), r"'n_estimators' option .*\(found -5\)"),
    "option/existing-out-dir-without-overwrite": (
        _existing_run, r"already holds a training run. Pass --overwrite"),
    "option/resume-with-overwrite": (
        _option("--resume", "--overwrite"), r"'resume' option cannot be combined with --overwrite"),
    "option/unreachable-scheduler": (
        _unreachable, r"127\.0\.0\.1:\d+"),
    "option/exclude-features-missing-file": (
        _option("--exclude-features", "lists/missing.txt"),
        r"'exclude_features' option names a file that does not exist.*missing\.txt"),
    "option/storage-option-without-equals": (
        _option("--storage-option", "anon"), r"--storage-option expects key=value \(found 'anon'\)"),
    "option/unknown-strategy": (
        _option("--strategy", "quantum"), r"Unknown strategy 'quantum'\. Known strategies: auto, single"),
    # -- model bundles (predict)
    "model/model-is-not-a-bundle": (
        _not_a_bundle, r"'.*notamodel' is not a metadask model bundle \(no manifest\.json\)"),
    "model/model-from-a-newer-format": (
        _manifest(lambda mf: mf.update(format_version=99)),
        r"format version 99 is newer than this metadask supports \(1\)\. Upgrade metadask"),
    "model/edited-manifest": (
        _manifest(lambda mf: mf["features"].reverse(), redigest=False), r"was edited after the model was saved"),
    "model/manifest-not-json": (
        _predict_model(lambda m: (m / "manifest.json").write_text("{not json")), r"manifest\.json' is not valid JSON"),
    "model/manifest-path-escapes-the-bundle": (
        _predict_model(lambda m: _forge_file(m, "../outside.ubj", b"x")),
        r"names a file outside the bundle \('\.\./outside\.ubj'\)"),
    "model/manifest-absolute-path": (
        _manifest(lambda mf: mf["files"].__setitem__("/etc/passwd", "0" * 64)),
        r"names a file outside the bundle \('/etc/passwd'\)"),
    "model/bundle-file-missing": (
        _predict_model(lambda m: _booster(m).unlink()), r"Bundle file 'boosters/.*\.ubj' is missing"),
    "model/bundle-file-modified": (
        _predict_model(lambda m: _booster(m).write_bytes(_booster(m).read_bytes()[:-3])),
        r"does not match its checksum in the manifest"),
    "model/model-type-outside-the-allow-list": (
        _manifest(lambda mf: mf.update(model_type="pickle")), r"Unknown model type 'pickle'"),
    "model/booster-bytes-are-garbage": (
        _predict_model(lambda m: _forge_file(m, str(_booster(m).relative_to(m)), b"garbage")),
        r"Cannot rebuild the model in .*\. The bundle is damaged"),
    "model/dataset-lacks-a-model-feature": (
        _lacking_feature, r"lacks 1 feature columns the model was trained on: feat_b"),
    "model/predict-out-exists": (
        _predict_out_exists, r"pred\.parquet' exists\. Pass --overwrite"),
}


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_catalogue_holds_at_least_25_malformed_inputs() -> None:
    assert len(CASES) >= 25
    kinds = pd.Series([case.split("/")[0] for case in CASES]).value_counts().to_dict()
    assert set(kinds) == {"dataset", "option", "model"} and min(kinds.values()) >= 5, kinds


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_input_gives_one_clear_line_exit_2_and_changes_nothing(case: str, tmp_path: Path, cluster,
                                                                        bundle: Path) -> None:
    make, pattern = CASES[case]
    env = Env(root=tmp_path, scheduler=cluster.scheduler_address, bundle=bundle)
    args = make(env)
    before = _snapshot(tmp_path)
    out_existed = (tmp_path / "out").exists()

    result = CliRunner().invoke(main, args)

    err = result.stderr
    assert result.exit_code == 2, (result.exit_code, err, result.exception)
    assert "Traceback" not in err + result.stdout
    errors = [line for line in err.splitlines() if line.startswith("metadask: error: ")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert re.search(pattern, errors[0]), errors[0]
    # nothing of the user's changed: only a new, clearly incomplete --out-dir may appear
    after = _snapshot(tmp_path)
    new = {k for k in set(after) - set(before)}
    if not out_existed and new:
        assert all(k.startswith("out/") for k in new), new
        assert "out/RUN_INCOMPLETE" in new
    else:
        assert not new, new
    assert {k: after[k] for k in before} == before


# -- what looks odd but is well formed is accepted (the checks raise no false alarms) ----------


def _interleaved_spanning_gene() -> list[pd.DataFrame]:
    g1 = gene_rows("G1", 12)
    return [pd.concat([frame("G0"), g1.iloc[::2]], ignore_index=True),
            pd.concat([g1.iloc[1::2], frame("G2", "G3")], ignore_index=True)]


def _positions_repeated_across_transcripts() -> pd.DataFrame:
    a = frame("G0", "G1", "G2").assign(transcript_id="T1")
    b = gene_rows("G1").assign(transcript_id="T2")  # G1's positions again, for another transcript
    return pd.concat([a, b], ignore_index=True)


def _odd_column_names() -> pd.DataFrame:
    return frame("G0", "G1", "G2").rename(columns={"feat_a": "a b/c", "feat_b": "x[1]<y\nz"})


def _scores_at_the_bounds() -> pd.DataFrame:
    df = frame("G0", "G1", "G2")
    df.loc[0, ["neither_score", "donor_score", "acceptor_score"]] = [0.0, 1.0 + 1e-9, -1e-9]
    return df


@pytest.mark.parametrize("make", [_interleaved_spanning_gene, _positions_repeated_across_transcripts,
                                  _odd_column_names, _scores_at_the_bounds])
def test_odd_but_well_formed_datasets_pass_the_checks(make, tmp_path: Path) -> None:
    frames = make()
    for i, f in enumerate(frames if isinstance(frames, list) else [frames]):
        write(tmp_path / "ds" / f"batch_{i:05d}.parquet", f)
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "ds"), "--json"])
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["genes"] == (4 if make is _interleaved_spanning_gene else 3)
