"""``cbm extract --obs-time``: checked against the parcel set's season and against a registered time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg
import pytest
import shapely
from affine import Affine
from test_extract_support import add_parcel_set, row_counts, write_tif

from cbm_tasks import cli
from cbm_tasks.errors import BadInputError
from cbm_tasks.pipeline.files import SEASON_TOLERANCE, check_season

X0, Y0 = 500000, 5600100


@pytest.fixture
def image(conn: psycopg.Connection, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CBM_DATABASE_URL", db_url)
    parcels = [(f"p{i}", shapely.box(X0 + 20 * i, Y0 - 40, X0 + 20 * i + 20, Y0)) for i in range(3)]
    add_parcel_set(conn, aoi="cli", year=2023, srid=32631, parcels=parcels)
    return write_tif(tmp_path / "image.tif", np.full((1, 4, 6), 1000, np.uint16),
                     transform=Affine(10, 0, X0, 0, -10, Y0), nodata=0, descriptions=["B04"])


def _extract(image: Path, *extra: str) -> int:
    return cli.main(["extract", str(image), "--aoi", "cli", "--year", "2023", *extra])


def test_year_one_is_refused_for_a_2023_parcel_set(image: Path, conn: psycopg.Connection,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    before = row_counts(conn)
    assert _extract(image, "--obs-time", "0001-06-01T10:00:00Z") == 2
    err = capsys.readouterr().err
    assert "acquisition time 0001-06-01T10:00:00+00:00 (--obs-time) is outside the season of the 2023" in err
    assert "expected 2022-07-02 .. 2024-07-01" in err and str(image) in err
    assert row_counts(conn) == before


@pytest.mark.parametrize(("when", "inside"), [
    (datetime(2023, 1, 1, tzinfo=UTC) - SEASON_TOLERANCE, True),  # first instant of the season
    (datetime(2023, 1, 1, tzinfo=UTC) - SEASON_TOLERANCE - timedelta(microseconds=1), False),
    (datetime(2024, 1, 1, tzinfo=UTC) + SEASON_TOLERANCE - timedelta(microseconds=1), True),
    (datetime(2024, 1, 1, tzinfo=UTC) + SEASON_TOLERANCE, False),  # the season ends before this
])
def test_season_bounds(when: datetime, inside: bool) -> None:
    if inside:
        check_season(when, year=2023, image="x.tif", source="--obs-time")
    else:
        with pytest.raises(BadInputError, match=r"image x\.tif: acquisition time .* outside the season"):
            check_season(when, year=2023, image="x.tif", source="--obs-time")


def test_a_different_obs_time_for_a_registered_image_is_refused(image: Path, conn: psycopg.Connection,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert _extract(image, "--obs-time", "2023-06-01T10:00:00Z") == 0
    counts = row_counts(conn)
    capsys.readouterr()
    assert _extract(image, "--obs-time", "2023-07-15T10:00:00Z") == 2
    err = capsys.readouterr().err
    assert "registered (product" in err and "acquisition time 2023-06-01T10:00:00+00:00" in err
    assert "--obs-time says 2023-07-15T10:00:00+00:00" in err
    assert row_counts(conn) == counts
    # the same time, or none, re-extracts as before
    assert _extract(image, "--obs-time", "2023-06-01T12:00:00+02:00") == 0
    assert _extract(image) == 0
    assert conn.execute("SELECT acquired_at FROM cbm.product").fetchall() == [(datetime(2023, 6, 1, 10, tzinfo=UTC),)]


def test_time_read_from_the_image_is_checked_too(image: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    old = write_tif(tmp_path / "old.tif", np.full((1, 4, 6), 1000, np.uint16),
                    transform=Affine(10, 0, X0, 0, -10, Y0), nodata=0, descriptions=["B04"],
                    tags={"TIFFTAG_DATETIME": "2019:07:09 11:00:00"})
    assert cli.main(["extract", str(old), "--aoi", "cli", "--year", "2023"]) == 2
    assert "(read from the image) is outside the season of the 2023 parcel set" in capsys.readouterr().err
