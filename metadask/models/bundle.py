"""Model bundles: a directory of boosters / numbers plus a checksummed manifest. No pickle.

Layout::

    model/
      manifest.json       format version, strategy, model type, ordered features, label map,
                          calibration, training options, library versions, sha256 of every file
      boosters/*.ubj      XGBoost UBJSON boosters (or members/<i>/*.ubj for ensembles)
      model.json          the model type's own numbers (weights, coefficients, ...)

A bundle is written to a temporary directory and renamed into place, so a bundle that exists
is complete. Loading verifies the format version, that every path stays inside the bundle,
and every file's checksum, before anything is parsed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Any

from metadask.dataset.schema import LABELS
from metadask.errors import ModelError
from metadask.io import atomic_write_dir
from metadask.models.base import MetaModel
from metadask.models.calibration import Calibrator
from metadask.models.thresholds import DEFAULT_THRESHOLDS, check_thresholds

FORMAT_VERSION = 1
MANIFEST = "manifest.json"

# model types a manifest may name -> the class that reads them (a fixed allow-list: a bundle
# can never make metadask import or run anything else)
MODEL_TYPES: dict[str, str] = {
    "boosters": "metadask.models.boosted:BoosterModel",
    "ensemble": "metadask.models.ensemble:EnsembleModel",
    "linear": "metadask.models.linear:LinearModel",
}


def _model_class(model_type: str) -> type[MetaModel]:
    if model_type not in MODEL_TYPES:
        raise ModelError(f"Unknown model type '{model_type}' in the manifest (known: {', '.join(MODEL_TYPES)}).")
    module, name = MODEL_TYPES[model_type].split(":")
    return getattr(importlib.import_module(module), name)


def _type_of(model: MetaModel) -> str:
    for key, target in MODEL_TYPES.items():
        module, name = target.split(":")
        if type(model).__name__ == name and type(model).__module__ == module:
            return key
    raise TypeError(f"{type(model).__name__} is not a bundle model type")


def library_versions() -> dict[str, str]:
    import numpy
    import sklearn
    import xgboost

    from metadask._version import __version__

    return {"metadask": __version__, "xgboost": xgboost.__version__, "numpy": numpy.__version__, "scikit-learn": sklearn.__version__}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_model(model: MetaModel, path: str | os.PathLike, *, strategy: str, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a bundle at ``path`` (replacing an existing bundle atomically)."""
    path = Path(path)
    files, settings = model.to_files()
    files = dict(files)
    files["model.json"] = json.dumps(settings, indent=1, sort_keys=True).encode()
    manifest = {
        "format": "metadask-model",
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "strategy": strategy,
        "model_type": _type_of(model),
        "features": list(model.features),
        "label_map": {str(i): name for i, name in enumerate(LABELS)},
        "calibration": [c.to_dict() for c in model.calibrators],
        "thresholds": dict(model.thresholds),
        "probability": "p_k = calibrator_k(sigmoid(margin_k)) (a stacked calibrator also reads the base score named "
                       "in its params); probabilities = p / sum(p)",
        "info": model.info,
        "libraries": library_versions(),
        **(extra or {}),
        "files": {name: _sha256(data) for name, data in sorted(files.items())},
    }
    manifest["manifest_sha256"] = _manifest_digest(manifest)

    def write(tmp: Path) -> None:
        for name, data in files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))

    # disk full, permissions: one clear error and the previous bundle stays as it was
    return atomic_write_dir(path, write)


def _manifest_digest(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return _sha256(json.dumps(body, sort_keys=True, default=str).encode())


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.is_file() and path.name == MANIFEST:
        path = path.parent
    mf = path / MANIFEST
    if not mf.is_file():
        raise ModelError(f"'{path}' is not a metadask model bundle (no {MANIFEST}). Pass the model/ directory of a run.")
    try:
        manifest = json.loads(mf.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"'{mf}' is not valid JSON ({exc}). The bundle is damaged; retrain or restore it.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "metadask-model":
        raise ModelError(f"'{mf}' is not a metadask model manifest.")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(
            f"Model bundle format version {version!r} is newer than this metadask supports ({FORMAT_VERSION}). "
            "Upgrade metadask to load it."
        )
    if manifest.get("manifest_sha256") != _manifest_digest(manifest):
        raise ModelError(
            f"'{mf}' was edited after the model was saved (its checksum does not match). "
            "Restore the original manifest or retrain."
        )
    return manifest


def load_model(path: str | os.PathLike, *, verbose: bool = False) -> MetaModel:
    """Load any metadask model bundle (single, ensemble, distributed, incremental).

    Verifies the manifest, that no file path escapes the bundle, and each file's SHA-256
    before parsing anything. Never executes code from the bundle.
    """
    root = Path(path)
    if root.is_file():
        root = root.parent
    manifest = read_manifest(root)
    root_resolved = root.resolve()
    files: dict[str, bytes] = {}
    checksums = manifest.get("files")
    if not isinstance(checksums, dict) or "model.json" not in checksums:
        raise ModelError(f"The manifest in '{root}' lists no files. The bundle is damaged; retrain or restore it.")
    for name, digest in checksums.items():
        target = (root / name).resolve()
        if os.path.isabs(name) or not target.is_relative_to(root_resolved):
            raise ModelError(f"The manifest in '{root}' names a file outside the bundle ('{name}'). Refusing to load it.")
        if not target.is_file():
            raise ModelError(f"Bundle file '{name}' is missing from '{root}'. Restore the complete model directory.")
        data = target.read_bytes()
        if _sha256(data) != digest:
            raise ModelError(
                f"Bundle file '{name}' does not match its checksum in the manifest: the bundle was modified or "
                "damaged. Restore it or retrain."
            )
        files[name] = data
    settings = json.loads(files.pop("model.json"))
    cls = _model_class(str(manifest.get("model_type")))
    features = manifest.get("features")
    if not isinstance(features, list) or not features:
        raise ModelError(f"The manifest in '{root}' has no feature list.")
    try:
        model = cls.from_files(files, settings, features)
        model.calibrators = [Calibrator.from_dict(c) for c in manifest.get("calibration", [])] or model.calibrators
    except (KeyError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # XGBoost appends a native backtrace
        raise ModelError(f"Cannot rebuild the model in '{root}': {first}. The bundle is damaged; retrain or restore it.") from None
    model.info = dict(manifest.get("info", {}))
    model.thresholds = check_thresholds(manifest.get("thresholds") or DEFAULT_THRESHOLDS)
    model.strategy = manifest.get("strategy")  # type: ignore[attr-defined]
    model.manifest = manifest  # type: ignore[attr-defined]
    if verbose:
        import logging

        logging.getLogger("metadask").info("Loaded %s from %s", model.describe(), root)
    return model
