"""Safe model loading: no pickle, checksums first, nothing outside the bundle, a fixed allow-list.

A model bundle is data (XGBoost UBJSON boosters, JSON numbers and a checksummed manifest).
Loading must never execute code from it: files the manifest does not list are never read,
pickle is never called, a model type outside the allow-list is refused, and no path may
lead outside the bundle (``../``, absolute paths, symlinks).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

import metadask
from metadask.errors import ModelError
from metadask.models.boosted import BoosterModel
from metadask.models.bundle import save_model

LABELS = ("neither", "donor", "acceptor")
# names with spaces, slashes, brackets, '<', a newline and non-ASCII are odd but not malformed:
# the bundle stores them verbatim and prediction selects columns by them
FEATURES = ("neither_score", "donor_score", "acceptor_score", "a b/c", "x[1]<y", "line\nbreak", "Δscore")


class _Payload:
    """Unpickling this writes a marker file: proof that code from a bundle ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickle executed"))


def _rows(n: int = 50, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.random((n, len(FEATURES))), columns=list(FEATURES))
    df["splice_type"] = np.asarray(LABELS, dtype=object)[rng.integers(0, 3, n)]
    return df


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    df = _rows()
    x = df[list(FEATURES)].to_numpy(np.float32)
    boosters = [xgb.train({"nthread": 1, "seed": 0}, xgb.DMatrix(x, label=(df["splice_type"] == c).to_numpy()), 3)
                for c in LABELS]
    path = tmp_path_factory.mktemp("bundle") / "model"
    model = BoosterModel(boosters, FEATURES)
    save_model(model, path, strategy="single")
    return path, model.predict_proba(df)


@pytest.fixture
def bundle(saved, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved[0], tmp_path / "model"))


def _forge(bundle: Path, change) -> None:
    """Edit the manifest and fix its checksum: a deliberate forgery, not damage."""
    mf = json.loads((bundle / "manifest.json").read_text())
    change(mf)
    body = {k: v for k, v in mf.items() if k != "manifest_sha256"}
    mf["manifest_sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(mf))


def _list_file(bundle: Path, name: str, data: bytes | None = None) -> None:
    if data is not None:
        (bundle / name).write_bytes(data)
    digest = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    _forge(bundle, lambda mf: mf["files"].__setitem__(name, digest))


def test_loading_and_predicting_never_call_pickle(bundle: Path, saved, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used while loading a model")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    model = metadask.load_model(bundle)
    np.testing.assert_array_equal(model.predict_proba(_rows()), saved[1])


def test_the_bundle_holds_only_ubjson_and_json_files(bundle: Path) -> None:
    for p in bundle.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert p.suffix in (".ubj", ".json"), p
            assert not data.startswith(b"\x80"), f"{p} looks like a pickle"
            if p.suffix == ".json":
                json.loads(data)


def test_a_pickle_the_manifest_does_not_list_is_never_read(bundle: Path, saved, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (bundle / "model.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    (bundle / "boosters" / "extra.pkl").write_bytes(pickle.dumps(_Payload(marker)))

    model = metadask.load_model(bundle)

    np.testing.assert_array_equal(model.predict_proba(_rows()), saved[1])
    assert not marker.exists()


@pytest.mark.parametrize("forged", [False, True], ids=["checksum-left", "checksum-forged"])
def test_a_pickle_in_place_of_a_booster_is_refused_without_running_it(bundle: Path, tmp_path: Path,
                                                                      forged: bool) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    if forged:
        _list_file(bundle, "boosters/donor.ubj", payload)
        match = r"Cannot rebuild the model .* The bundle is damaged"
    else:
        (bundle / "boosters" / "donor.ubj").write_bytes(payload)
        match = r"'boosters/donor\.ubj' does not match its checksum"
    with pytest.raises(ModelError, match=match):
        metadask.load_model(bundle)
    assert not marker.exists()


@pytest.mark.parametrize("model_type", ["pickle", "os:system", "builtins:eval", "metadask.models.boosted:BoosterModel",
                                        "../boosters"])
def test_a_model_type_outside_the_allow_list_is_refused(bundle: Path, model_type: str) -> None:
    _forge(bundle, lambda mf: mf.update(model_type=model_type))
    with pytest.raises(ModelError, match=r"Unknown model type .* \(known: boosters, ensemble, linear\)"):
        metadask.load_model(bundle)


@pytest.mark.parametrize("name", ["../secret.ubj", "boosters/../../secret.ubj", "/etc/hostname", "//etc/hostname"])
def test_a_manifest_path_outside_the_bundle_is_refused(bundle: Path, name: str) -> None:
    outside = bundle.parent / "secret.ubj"
    outside.write_bytes((bundle / "boosters" / "donor.ubj").read_bytes())
    digest = hashlib.sha256(outside.read_bytes()).hexdigest()
    _forge(bundle, lambda mf: mf["files"].__setitem__(name, digest))
    with pytest.raises(ModelError, match=r"names a file outside the bundle"):
        metadask.load_model(bundle)


def test_a_symlink_leading_out_of_the_bundle_is_refused(bundle: Path) -> None:
    outside = bundle.parent / "elsewhere.ubj"
    shutil.move(bundle / "boosters" / "donor.ubj", outside)
    os.symlink(outside, bundle / "boosters" / "donor.ubj")  # same bytes, so the checksum matches
    with pytest.raises(ModelError, match=r"names a file outside the bundle \('boosters/donor\.ubj'\)"):
        metadask.load_model(bundle)


def test_model_settings_cannot_name_a_file_the_manifest_does_not_list(bundle: Path) -> None:
    """model.json is data too: a booster path in it must be one of the checksummed files."""
    settings = json.loads((bundle / "model.json").read_text())
    settings["boosters"][1] = "../secret.ubj"
    (bundle.parent / "secret.ubj").write_bytes((bundle / "boosters" / "donor.ubj").read_bytes())
    _list_file(bundle, "model.json", json.dumps(settings).encode())
    with pytest.raises(ModelError, match=r"Cannot rebuild the model"):
        metadask.load_model(bundle)


def test_odd_feature_names_round_trip_through_a_bundle(bundle: Path, saved) -> None:
    model = metadask.load_model(bundle)
    assert model.features == list(FEATURES)
    rows = _rows()
    shuffled = rows[list(reversed(rows.columns))]
    np.testing.assert_array_equal(model.predict_proba(shuffled), saved[1])
