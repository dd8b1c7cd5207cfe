"""The 1:N gallery: enrolled embeddings by subject id, exact cosine top-k search, optional snapshot file.

The gallery lives in each replica's memory. Replicas behind one Service must load the same snapshot
(``FACECOMPARE_GALLERY_PATH`` on a shared read-mostly volume) for identify to answer alike everywhere;
enrol/delete through the API change the replica that received them (and its snapshot file). A fleet that
enrols continuously belongs on a vector store; this keeps the service self-contained.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import numpy as np

from workloads.face_compare import logs

log = logs.get("gallery")


class GalleryFullError(Exception):
    """The gallery holds ``max_size`` subjects already."""


class Gallery:
    """Thread-safe: searches run on worker threads while enrolments arrive on the event loop."""

    def __init__(self, dim: int, *, max_size: int, path: Path | None = None) -> None:
        self.dim = dim
        self.max_size = max_size
        self.path = path
        self._lock = threading.Lock()
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._matrix = np.zeros((64, dim), dtype=np.float32)
        if path is not None and path.exists():
            self._load(path)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, subject_id: object) -> bool:
        return subject_id in self._row

    def subject_ids(self, limit: int) -> list[str]:
        with self._lock:
            return sorted(self._ids)[:limit]

    def enrol(self, subject_id: str, embedding: np.ndarray) -> bool:
        """Add or replace a subject; True when it was new."""
        with self._lock:
            row = self._row.get(subject_id)
            created = row is None
            if row is None:
                if len(self._ids) >= self.max_size:
                    raise GalleryFullError(f"the gallery holds its maximum of {self.max_size} subjects")
                row = len(self._ids)
                if row == len(self._matrix):
                    self._matrix = np.concatenate([self._matrix, np.zeros_like(self._matrix)])
                self._ids.append(subject_id)
                self._row[subject_id] = row
            self._matrix[row] = embedding
            self._save()
            return created

    def delete(self, subject_id: str) -> bool:
        """Remove a subject; False when it was not enrolled."""
        with self._lock:
            row = self._row.pop(subject_id, None)
            if row is None:
                return False
            last = len(self._ids) - 1
            if row != last:  # move the last subject into the hole, keeping rows dense
                moved = self._ids[last]
                self._ids[row] = moved
                self._row[moved] = row
                self._matrix[row] = self._matrix[last]
            self._ids.pop()
            self._save()
            return True

    def search(self, embedding: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        """The ``top_k`` most similar subjects, most similar first, as (id, cosine similarity)."""
        with self._lock:
            n = len(self._ids)
            if n == 0:
                return []
            scores = self._matrix[:n] @ embedding
            k = min(top_k, n)
            best = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
            best = best[np.argsort(-scores[best], kind="stable")]
            return [(self._ids[i], float(scores[i])) for i in best]

    def _save(self) -> None:
        if self.path is None:
            return
        n = len(self._ids)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, ids=np.array(self._ids, dtype=str), embeddings=self._matrix[:n])
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _load(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as data:
            ids = [str(i) for i in data["ids"]]
            embeddings = np.asarray(data["embeddings"], dtype=np.float32)
        if embeddings.shape != (len(ids), self.dim):
            raise ValueError(f"{path}: embeddings are {embeddings.shape}; expected ({len(ids)}, {self.dim})")
        self._ids = ids
        self._row = {subject: row for row, subject in enumerate(ids)}
        self._matrix = np.zeros((max(64, len(ids)), self.dim), dtype=np.float32)
        self._matrix[: len(ids)] = embeddings
        log.info("gallery loaded", extra={"path": str(path), "subjects": len(ids)})
