"""A journal of finished fits in the output directory, so ``--resume`` can reuse them.

Each finished fit is stored as ``journal/<key>.ubj`` (the booster) and ``journal/<key>.json``
(its numbers, the SHA-256 of the booster file and a digest of everything that determined the
fit: genes, features, parameters, dataset fingerprint). An entry is reused only when the
digest matches and the booster's checksum verifies. Files are written atomically.

``journal/data.fingerprint`` holds the dataset fingerprint the journaled fits saw
(:meth:`metadask.dataset.source.Dataset.fingerprint`: per file size, modification time or
ETag, parquet footer statistics). A fit's digest covers the fingerprints of the files it
reads, so ``--resume`` refits exactly the fits whose data changed; :meth:`Journal.check_data`
logs which files changed and how.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from metadask.io import write_bytes
from metadask.models.boosted import FitOutput

log = logging.getLogger(__name__)


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


DATA_FILE = "data.fingerprint"
_PARTS = ("size", "modification time / ETag", "parquet footer statistics")


class Journal:
    """Finished fits of one run, keyed by fit key."""

    def __init__(self, root: str | os.PathLike, enabled_for_reuse: bool):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".*.tmp-*"):  # a write cut short by a killed client (atomic_write's temporaries)
            stale.unlink(missing_ok=True)
        self.reuse = enabled_for_reuse
        self.reused: list[str] = []

    def get(self, key: str, spec_digest: str) -> FitOutput | None:
        if not self.reuse:
            return None
        meta_path, ubj_path = self.root / f"{key}.json", self.root / f"{key}.ubj"
        if not (meta_path.is_file() and ubj_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            raw = ubj_path.read_bytes()
        except (OSError, ValueError):
            return None
        if meta.get("spec") != spec_digest or hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
            log.info("Journal entry %s does not match this run; refitting it", key)
            return None
        fields = meta["fit"]
        self.reused.append(key)
        return FitOutput(booster=raw, **fields)

    def put(self, key: str, spec_digest: str, out: FitOutput) -> None:
        fields = {k: v for k, v in asdict(out).items() if k != "booster"}
        write_bytes(self.root / f"{key}.ubj", out.booster)
        meta = {"spec": spec_digest, "sha256": hashlib.sha256(out.booster).hexdigest(), "fit": fields}
        write_bytes(self.root / f"{key}.json", json.dumps(meta).encode())

    def check_data(self, fingerprint: list[list[Any]]) -> list[str]:
        """Record the dataset fingerprint; on ``--resume``, log (and return) what changed since.

        ``fingerprint`` is :meth:`~metadask.dataset.source.Dataset.fingerprint`'s list. The
        fits reading a changed file have a different digest, so they are refitted.
        """
        path = self.root / DATA_FILE
        changes: list[str] = []
        if self.reuse and path.is_file():
            try:
                before = {row[0]: row[1:] for row in json.loads(path.read_text())}
            except (OSError, ValueError, TypeError, IndexError):
                before = {}
            now = {row[0]: row[1:] for row in fingerprint}
            for file, values in now.items():
                old = before.get(file)
                if old is None:
                    changes.append(f"{file}: new file")
                elif list(old) != list(values):
                    what = [name for name, a, b in zip(_PARTS, old, values) if a != b]
                    changes.append(f"{file}: {', '.join(what)} changed")
            changes += [f"{file}: removed" for file in before if file not in now]
            if changes:
                log.warning("--resume: the dataset changed since the journaled fits; every fit that reads a changed "
                            "file is refitted: %s", "; ".join(changes))
        write_bytes(path, json.dumps(fingerprint).encode())
        return changes
