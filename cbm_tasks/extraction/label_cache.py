"""Reuse of parcel label rasters between images of the same grid.

Rasterising the parcels of a Sentinel-2 MGRS tile costs as much as the statistics of a
band, and the same tile comes back every few days with the same grid. ``LabelCache`` keeps
the label rasters of the last few grids in memory (LRU) and, when given a directory, also
on disk as ``.npy`` files, so that later Airflow task processes on the same worker reuse
them. It is an object passed to the extraction, never module-level state.

A label raster is valid only for the exact grid (CRS, transform, shape) and the exact
parcel set version; all of these are in ``GridKey`` and hence in the file name (a hash).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbm_tasks.errors import ConfigError

__all__ = ["GridKey", "LabelCache"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GridKey:
    """Identity of a label raster: the pixel grid and the parcel set version burnt into it.

    Attributes:
        crs_wkt: the grid's CRS as WKT.
        transform: the affine transform as 6 numbers (a, b, c, d, e, f), as rasterio's.
        shape: (rows, columns).
        parcel_set_id: cbm.parcel_set id.
        parcel_set_version: bumped whenever the parcel geometries change.
        overlaps: digest of the set's overlapping parcel keys, which the raster leaves out
            (they get their own layers); "" when none. A set whose overlaps were found
            after its labels were cached (migration 009) thus gets new labels.
        database: the database holding the set (``aoi.ParcelSetRef.database``). Set ids repeat
            across databases (two deployments, a restored copy, test databases), and the disk
            cache is shared by all of them: without it one database's labels would serve
            another's parcels, silently wrong statistics.
    """

    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]
    shape: tuple[int, int]
    parcel_set_id: int
    parcel_set_version: int
    overlaps: str = ""
    database: str = ""

    def __post_init__(self) -> None:
        if len(self.transform) != 6:
            raise ValueError(f"transform must have 6 numbers, got {len(self.transform)}")
        if len(self.shape) != 2 or min(self.shape) <= 0:
            raise ValueError(f"shape must be 2 positive sizes, got {self.shape!r}")
        # normalise so that equal grids hash equally whatever number types the caller used
        object.__setattr__(self, "transform", tuple(float(v) for v in self.transform))
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))

    def digest(self) -> str:
        """Return a stable SHA-256 hex digest of the key (the on-disk file name)."""
        payload = json.dumps(
            [self.crs_wkt, [repr(v) for v in self.transform], list(self.shape),
             self.parcel_set_id, self.parcel_set_version, self.overlaps, self.database],
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode()).hexdigest()


class LabelCache:
    """LRU cache of label rasters, in memory and optionally on disk.

    Args:
        max_entries: label rasters kept in memory (a 10980 x 10980 int32 raster is 482 MB,
            so keep this small on workers with little memory).
        directory: where .npy copies are written and looked up; None keeps them in memory
            only. Files are written atomically (temporary file + os.replace), so concurrent
            processes never read a partial file.
        max_disk_bytes: budget of the directory; after each write the least recently used
            files beyond it are removed (a full S2 tile's 10 m labels take 482 MB). None = no limit.

    Cached arrays are made read-only: callers share them. Arrays found on disk are read-only
    memory maps of the .npy file.
    """

    def __init__(
        self, *, max_entries: int = 4, directory: Path | None = None, max_disk_bytes: int | None = None
    ) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        if max_disk_bytes is not None and max_disk_bytes < 0:
            raise ValueError(f"max_disk_bytes must be >= 0, got {max_disk_bytes}")
        self._max_entries = max_entries
        self._max_disk_bytes = max_disk_bytes
        self._directory = Path(directory) if directory is not None else None
        self._entries: OrderedDict[GridKey, np.ndarray] = OrderedDict()
        if self._directory is not None:
            self._directory.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: GridKey) -> np.ndarray | None:
        """Return the cached label raster of *key* (read-only), or None."""
        labels = self._entries.get(key)
        if labels is not None:
            self._entries.move_to_end(key)
            log.debug("label cache hit (memory) parcel_set=%d", key.parcel_set_id)
            return labels
        labels = self._load(key)
        if labels is not None:
            self._remember(key, labels)
        return labels

    def put(self, key: GridKey, labels: np.ndarray) -> None:
        """Store *labels* for *key* (in memory, and on disk when a directory is set).

        Raises:
            ValueError: labels are not a 2-D int32 array of the key's shape.
        """
        if labels.dtype != np.int32 or labels.shape != key.shape:
            raise ValueError(f"labels must be int32 of shape {key.shape}, got {labels.dtype} {labels.shape}")
        labels.flags.writeable = False
        self._remember(key, labels)
        if self._directory is not None:
            self._save(key, labels)

    def _remember(self, key: GridKey, labels: np.ndarray) -> None:
        if self._max_entries == 0:
            return
        self._entries[key] = labels
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def _path(self, key: GridKey) -> Path:
        if self._directory is None:
            raise ConfigError("this label cache keeps labels in memory only: it has no directory to save to")
        return self._directory / f"labels_{key.digest()}.npy"

    def _save(self, key: GridKey, labels: np.ndarray) -> None:
        path = self._path(key)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".labels_", suffix=".npy.tmp")
        try:
            with os.fdopen(fd, "wb") as tmp:
                np.save(tmp, labels, allow_pickle=False)
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        log.debug("label cache stored %s", path.name)
        self._prune(keep=path)

    def _prune(self, *, keep: Path) -> None:
        """Remove the least recently used files beyond the disk budget (never *keep*)."""
        if self._max_disk_bytes is None or self._directory is None:
            return
        files: list[tuple[float, int, Path]] = []
        for path in self._directory.glob("labels_*.npy"):
            try:
                info = path.stat()
            except FileNotFoundError:  # removed by another process meanwhile
                continue
            files.append((info.st_mtime, info.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self._max_disk_bytes:
                break
            if path == keep:
                continue
            # a process that has it memory-mapped keeps reading it: unlink only drops the name
            path.unlink(missing_ok=True)
            total -= size
            log.info("label cache removed %s bytes=%d (over budget %d)", path.name, size, self._max_disk_bytes)

    def _load(self, key: GridKey) -> np.ndarray | None:
        if self._directory is None:
            return None
        path = self._path(key)
        try:
            # memory-mapped: pages come from the page cache, shared by the processes of a worker
            labels: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:  # truncated or foreign file: rebuild it
            log.warning("label cache file %s is unreadable, ignoring it: %s", path, err)
            path.unlink(missing_ok=True)
            return None
        if labels.dtype != np.int32 or labels.shape != key.shape:
            log.warning("label cache file %s holds %s %s, expected int32 %s; ignoring it",
                        path, labels.dtype, labels.shape, key.shape)
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)  # the budget removes the least recently used files first
        except OSError:
            pass  # removed meanwhile: the memory map stays valid
        log.debug("label cache hit (disk) %s", path.name)
        return labels
