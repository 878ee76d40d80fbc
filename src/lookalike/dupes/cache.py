"""Vectors of indexed pictures turned by 90 and 180 degrees, cached by (model, content hash).

CNN embeddings of a picture and of the same picture turned sideways are far apart (cosine often
under 0.5), so a copy stored sideways is rarely among its original's nearest neighbours. `dupes`
also searches the index with every picture's 90-degree view: for a copy turned by +90 the original's
view finds it, for -90 the copy's view finds the original; a copy turned by 180 degrees is found by
the original's 180-degree view (measured: bench/copies.py). The views cost two embeddings per
picture, once: they are kept here (`<library>/dupes-cache.sqlite`), keyed by content hash so renames and
re-indexing keep them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
from PIL import Image

# (degrees, transpose) of the cached views; the 90-degree one is stored under the model's name, the
# others under "<model>@<degrees>"
TURNS = ((90, Image.Transpose.ROTATE_90), (180, Image.Transpose.ROTATE_180))


class TurnedVectors:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS turned (model TEXT NOT NULL, hash TEXT NOT NULL, "
                             "dtype TEXT NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (model, hash))")

    @classmethod
    def of_library(cls, home: str | Path) -> TurnedVectors:
        return cls(Path(home) / "dupes-cache.sqlite")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> TurnedVectors:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, model: str, hashes: list[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i in range(0, len(hashes), 500):
            chunk = hashes[i:i + 500]
            q = ",".join("?" * len(chunk))
            for h, dtype, blob in self._db.execute(
                    f"SELECT hash, dtype, vector FROM turned WHERE model = ? AND hash IN ({q})", [model, *chunk]):
                out[h] = np.frombuffer(blob, dtype=dtype)
        return out

    def put(self, model: str, items: dict[str, np.ndarray]) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO turned VALUES (?, ?, ?, ?)",
                                 [(model, h, v.dtype.str, np.ascontiguousarray(v).tobytes())
                                  for h, v in items.items() if h])
