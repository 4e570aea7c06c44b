"""Where a Chime call stands, kept in small local files so a restarted gateway resumes it.

One JSON file per live call (``<dir>/<call key>.json``, written to a temporary name and renamed:
a crash leaves the old or the new file, never half of one): the streaming events' identities
(transaction id, Chime call id, stream ARNs, which leg is the caller), the last fragment number
whose audio went to the bridge on each leg, the part number, and the person's number *encrypted*
with ``LUPITA_PHONE_ENCRYPTION_KEY`` (the bridge's own AES-GCM helper), never in clear.

Why a file and not Postgres: the gateway has no database today and the checkpoint is read only by
the gateway that wrote it (after a crash or a restart of that process, or of a pod whose volume
survives); it changes once per fragment per leg, and a local rename is cheap and atomic. With
several replicas behind one event source, the call would need an owner across replicas (a row
with a lease in Postgres): not built; see the README.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class CheckpointStore:
    def __init__(self, directory: str) -> None:
        self.dir = Path(directory) if directory else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def enabled(self) -> bool:
        return self.dir is not None

    def _path(self, key: str) -> Path:
        assert self.dir is not None and "/" not in key and key not in ("", ".", "..")
        return self.dir / f"{key}.json"

    def save(self, key: str, state: dict) -> None:
        if self.dir is None:
            return
        path = self._path(key)
        tmp = path.with_suffix(".json.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def remove(self, key: str) -> None:
        if self.dir is not None:
            self._path(key).unlink(missing_ok=True)

    def load_all(self) -> dict[str, dict]:
        if self.dir is None:
            return {}
        out = {}
        for path in sorted(self.dir.glob("*.json")):
            try:
                out[path.stem] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # unreadable: left for an operator, never deleted silently
        return out
