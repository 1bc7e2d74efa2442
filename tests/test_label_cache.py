"""LabelCache: in-memory LRU, on-disk reuse across instances (worker processes), robustness."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from cbm_tasks.extraction.label_cache import GridKey, LabelCache

WKT = 'PROJCS["WGS 84 / UTM zone 31N",AUTHORITY["EPSG","32631"]]'


def _key(version: int = 1, *, x0: float = 399960.0, shape: tuple[int, int] = (3, 4)) -> GridKey:
    return GridKey(crs_wkt=WKT, transform=tuple(Affine(10, 0, x0, 0, -10, 5600040))[:6],  # type: ignore[arg-type]
                   shape=shape, parcel_set_id=2, parcel_set_version=version)


def _labels(fill: int, shape: tuple[int, int] = (3, 4)) -> np.ndarray:
    return np.full(shape, fill, np.int32)


def test_memory_lru_evicts_the_least_recently_used() -> None:
    cache = LabelCache(max_entries=2)
    a, b, c = _key(x0=0.0), _key(x0=10.0), _key(x0=20.0)
    cache.put(a, _labels(1))
    cache.put(b, _labels(2))
    assert cache.get(a) is not None  # a is now the most recent
    cache.put(c, _labels(3))
    assert cache.get(b) is None and len(cache) == 2
    labels = cache.get(a)
    assert labels is not None and int(labels[0, 0]) == 1 and not labels.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        labels[0, 0] = 5


def test_disk_copy_is_reused_by_another_instance(tmp_path: Path) -> None:
    LabelCache(directory=tmp_path).put(_key(), _labels(7))
    later = LabelCache(directory=tmp_path)  # a later task process on the same worker
    labels = later.get(_key())
    assert labels is not None and labels.dtype == np.int32 and (labels == 7).all() and not labels.flags.writeable
    assert later.get(_key(version=2)) is None  # parcels re-imported: a different raster
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("labels_") and files[0].endswith(".npy")


def test_disk_only_cache_keeps_nothing_in_memory(tmp_path: Path) -> None:
    cache = LabelCache(max_entries=0, directory=tmp_path)
    cache.put(_key(), _labels(4))
    assert len(cache) == 0
    labels = cache.get(_key())
    assert labels is not None and (labels == 4).all()


def test_corrupt_or_foreign_file_is_a_miss_and_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    LabelCache(directory=tmp_path).put(_key(), _labels(1))
    (path,) = tmp_path.iterdir()
    path.write_bytes(path.read_bytes()[:40])  # truncated, as by a full disk
    with caplog.at_level(logging.WARNING, logger="cbm_tasks.extraction.label_cache"):
        assert LabelCache(directory=tmp_path).get(_key()) is None
    assert "unreadable" in caplog.text and not path.exists()
    np.save(path, np.zeros((2, 2), np.int64))  # a file of the right name but not our raster
    assert LabelCache(directory=tmp_path).get(_key()) is None and not path.exists()


def test_put_validates_the_raster() -> None:
    cache = LabelCache()
    with pytest.raises(ValueError, match=r"int32 of shape \(3, 4\)"):
        cache.put(_key(), np.zeros((3, 4), np.int64))
    with pytest.raises(ValueError, match=r"int32 of shape \(3, 4\)"):
        cache.put(_key(), np.zeros((4, 3), np.int32))


def test_grid_key_is_normalised_and_validated() -> None:
    ints = GridKey(crs_wkt=WKT, transform=(10, 0, 5, 0, -10, 7), shape=(3, 4), parcel_set_id=1, parcel_set_version=1)
    floats = GridKey(crs_wkt=WKT, transform=(10.0, 0.0, 5.0, 0.0, -10.0, 7.0), shape=(3, 4), parcel_set_id=1,
                     parcel_set_version=1)
    assert ints == floats and hash(ints) == hash(floats) and ints.digest() == floats.digest()
    assert ints.digest() != _key().digest()
    with pytest.raises(ValueError, match="6 numbers"):
        GridKey(crs_wkt=WKT, transform=(1.0, 0.0, 0.0, 0.0), shape=(3, 4), parcel_set_id=1,  # type: ignore[arg-type]
                parcel_set_version=1)
    with pytest.raises(ValueError, match="2 positive sizes"):
        GridKey(crs_wkt=WKT, transform=(10, 0, 5, 0, -10, 7), shape=(0, 4), parcel_set_id=1, parcel_set_version=1)


def test_no_temporary_files_are_left(tmp_path: Path) -> None:
    cache = LabelCache(directory=tmp_path / "labels")
    for version in range(3):
        cache.put(_key(version), _labels(version))
    assert not [p for p in (tmp_path / "labels").iterdir() if not p.name.endswith(".npy")]


def test_disk_budget_removes_the_least_recently_used_files(tmp_path: Path) -> None:
    import os

    one_file = LabelCache(directory=tmp_path / "probe")
    one_file.put(_key(), _labels(0))
    size = next((tmp_path / "probe").iterdir()).stat().st_size
    cache = LabelCache(max_entries=0, directory=tmp_path / "c", max_disk_bytes=2 * size)
    a, b, c = _key(x0=0.0), _key(x0=10.0), _key(x0=20.0)
    cache.put(a, _labels(1))
    cache.put(b, _labels(2))
    for i, key in enumerate((a, b)):  # a used last: b is the least recently used
        os.utime(cache._path(key), (1000 + i, 1000 + i))
    assert cache.get(a) is not None
    cache.put(c, _labels(3))
    assert cache.get(b) is None
    assert cache.get(a) is not None and cache.get(c) is not None
    assert len(list((tmp_path / "c").glob("labels_*.npy"))) == 2
    with pytest.raises(ValueError, match="max_disk_bytes"):
        LabelCache(max_disk_bytes=-1)
