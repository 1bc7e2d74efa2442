"""An image that misses every parcel, or holds only nodata over them, says so (log, CLI output, result)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import psycopg
import pytest
import shapely
from affine import Affine
from test_extract_support import add_parcel_set, row_counts, write_tif

from cbm_tasks import cli

X0, Y0 = 500000, 5600100
PARCELS = [(f"p{i}", shapely.box(X0 + 20 * i, Y0 - 60, X0 + 20 * i + 20, Y0)) for i in range(4)]
ARGS = ["--aoi", "empty", "--year", "2018", "--obs-time", "2018-06-01T10:30:00Z"]


@pytest.fixture
def cli_db(db_url: str, conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> psycopg.Connection:
    monkeypatch.setenv("CBM_DATABASE_URL", db_url)
    add_parcel_set(conn, aoi="empty", year=2018, srid=32631, parcels=PARCELS)
    return conn


def test_image_missing_every_parcel_warns(cli_db: psycopg.Connection, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    far = write_tif(tmp_path / "far.tif", np.full((8, 10), 500, np.uint16),
                    transform=Affine(10, 0, X0 + 50_000, 0, -10, Y0), nodata=0, descriptions=["B04"])
    with caplog.at_level(logging.WARNING, logger="cbm_tasks.extraction.extract"):
        assert cli.main(["extract", str(far), *ARGS]) == 0
    out = capsys.readouterr().out
    assert "0 parcels" in out
    assert f"warning: image {far} misses every parcel of parcel set" in out
    assert any(r.levelno == logging.WARNING and "misses every parcel" in r.getMessage() for r in caplog.records)
    assert row_counts(cli_db)["cbm.parcel_obs"] == 0


def test_image_of_nodata_only_warns(cli_db: psycopg.Connection, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    blank = write_tif(tmp_path / "blank.tif", np.zeros((8, 10), np.uint16), transform=Affine(10, 0, X0, 0, -10, Y0),
                      nodata=0, descriptions=["B04"])
    with caplog.at_level(logging.WARNING, logger="cbm_tasks.extraction.extract"):
        assert cli.main(["extract", str(blank), *ARGS]) == 0
    out = capsys.readouterr().out
    assert "warning: image" in out and "holds only nodata over the 4 parcels it covers" in out
    assert any(r.levelno == logging.WARNING and "only nodata" in r.getMessage() for r in caplog.records)
    assert row_counts(cli_db)["cbm.parcel_obs"] == 0


def test_image_with_rows_gives_no_warning(cli_db: psycopg.Connection, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    image = write_tif(tmp_path / "ok.tif", np.full((8, 10), 700, np.uint16), transform=Affine(10, 0, X0, 0, -10, Y0),
                      nodata=0, descriptions=["B04"])
    assert cli.main(["extract", str(image), *ARGS]) == 0
    out = capsys.readouterr().out
    assert "4 parcels" in out and "warning" not in out
