"""``cbm extract`` and ``cbm timeseries export`` end to end, and the export's round trip."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import shapely
from affine import Affine
from test_extract_support import add_parcel_set, row_counts, write_tif

from cbm_tasks import cli
from cbm_tasks.errors import BadInputError
from cbm_tasks.timeseries.export import export_time_series
from cbm_tasks.timeseries.read import BAND_STATS_SCHEMA, CLASS_COUNTS_SCHEMA

X0, Y0 = 500000, 5600100
TRANSFORM = Affine(10, 0, X0, 0, -10, Y0)
PARCELS = [(f"p{i}", shapely.box(X0 + 20 * i, Y0 - 60, X0 + 20 * i + 20, Y0)) for i in range(4)]


@pytest.fixture
def cli_db(db_url: str, conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> psycopg.Connection:
    monkeypatch.setenv("CBM_DATABASE_URL", db_url)
    add_parcel_set(conn, aoi="cli", year=2018, srid=32631, parcels=PARCELS)
    return conn


def _image(tmp_path: Path, name: str, seed: int, tags: dict[str, str] | None = None) -> Path:
    rng = np.random.default_rng(seed)
    b04 = rng.integers(0, 3000, size=(8, 10), dtype=np.uint16)  # some 0 = nodata
    scl = rng.integers(0, 12, size=(8, 10), dtype=np.uint16)
    scl[:, 6:] = 0  # parcel p3 has no valid SCL pixel
    return write_tif(tmp_path / name, np.stack([b04, scl]), transform=TRANSFORM, nodata=0,
                     descriptions=["B04", "SCL"], scales=[1e-4, 1], offsets=[-0.1, 0], tags=tags)


def test_extract_cli_registers_the_file(cli_db: psycopg.Connection, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    image = _image(tmp_path, "image.tif", seed=1)
    before = row_counts(cli_db)
    assert cli.main(["extract", str(image), "--aoi", "cli", "--year", "2018"]) == 2
    error = capsys.readouterr().err
    assert "no acquisition time" in error and "--obs-time" in error
    assert row_counts(cli_db) == before  # the failed call registered nothing
    args = ["extract", str(image), "--aoi", "cli", "--year", "2018", "--obs-time", "2018-06-01T10:30:00Z",
            "--product-type", "CARD-BS"]
    assert cli.main(args) == 0
    assert "4 parcels" in capsys.readouterr().out
    product = cli_db.execute("SELECT product_id, uid, catalogue, product_type, collection, acquired_at "
                             "FROM cbm.product").fetchone()
    assert product is not None
    assert product[1:] == (str(image.resolve()), "file", "CARD-BS", "SENTINEL-1",
                           datetime(2018, 6, 1, 10, 30, tzinfo=UTC))
    status = cli_db.execute("SELECT status FROM cbm.product_status WHERE product_id = %s", (product[0],)).fetchone()
    assert status == ("extracted",)
    counts = row_counts(cli_db)
    assert cli.main(args) == 0  # a re-run replaces the rows: no duplicates, same product
    assert row_counts(cli_db) == counts
    assert counts["cbm.parcel_obs"] == 4 and counts["cbm.parcel_class_counts"] == 3 and counts["cbm.product"] == 1


def test_sentinel2_digital_numbers_need_their_scale(cli_db: psycopg.Connection, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # a red band as ESA delivers it, one file without a scale: uint16, reflectance x 10000 + 1000
    # (processing baseline 04.00); stored as it is, the markers would read 1,500 for 0.05
    dn = np.full((8, 10), 1500, np.uint16)
    image = write_tif(tmp_path / "T31UDS_20180601T103021_B04_10m.tif", dn, transform=TRANSFORM, nodata=0)
    base = ["extract", str(image), "--aoi", "cli", "--year", "2018", "--product-type", "S2MSI2A"]
    before = row_counts(cli_db)
    assert cli.main(base) == 2
    error = capsys.readouterr().err
    assert f"image {image.resolve()}: band B04 of this S2MSI2A image holds Sentinel-2 digital numbers" in error
    assert "--scale 0.0001 --offset -0.1" in error
    gee = write_tif(tmp_path / "gee_20180601.tif", np.stack([dn, dn]), transform=TRANSFORM, nodata=0,
                    descriptions=["B4", "B8"])  # Earth Engine's names of an S2_SR export, DNs as uint16
    assert cli.main(["extract", str(gee), *base[2:]]) == 2
    assert "bands B4, B8 of this S2MSI2A image hold Sentinel-2 digital numbers" in capsys.readouterr().err
    assert cli.main([*base, "--scale", "0"]) == 2
    assert "--scale must be a finite number other than 0, got 0.0" in capsys.readouterr().err
    assert row_counts(cli_db) == before  # nothing registered
    assert cli.main([*base, "--scale", "0.0001", "--offset", "-0.1"]) == 0
    means = cli_db.execute("SELECT stats[2] FROM cbm.parcel_obs ORDER BY parcel_key").fetchall()
    np.testing.assert_allclose([m for (m,) in means], [0.05] * 4, rtol=1e-5)
    bands = cli_db.execute("SELECT attributes -> 'bands' FROM cbm.product").fetchone()
    assert bands is not None and [(b["name"], b["scale"], b["offset"]) for b in bands[0]] == [("B04", 1e-4, -0.1)]
    assert cli.main(base) == 0  # a re-run decodes as the image was registered
    assert cli_db.execute("SELECT stats[2] FROM cbm.parcel_obs ORDER BY parcel_key").fetchall() == means
    assert cli.main([*base, "--scale", "0.0001"]) == 2
    error = capsys.readouterr().err
    assert "is registered (product" in error and "B04 x 0.0001 -0.1" in error and "registered reading is kept" in error


def test_a_stack_without_band_descriptions_is_named_by_the_user(cli_db: psycopg.Connection, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    # a stack as other tools write it (b1..b5, digital numbers, SCL last, no scale): without names the
    # markers would find no red or NIR in it
    stack = np.stack([np.full((8, 10), value, np.uint16) for value in (300, 600, 400, 3500, 4)])
    image = write_tif(tmp_path / "stack_20180601.tif", stack, transform=TRANSFORM)
    base = ["extract", str(image), "--aoi", "cli", "--year", "2018", "--product-type", "S2MSI2A"]
    assert cli.main([*base, "--bands", "B02,B03,red"]) == 2
    assert f"image {image.resolve()}: --bands names 3 bands, the file has 5 (b1, b2, b3, b4, b5)" in \
        capsys.readouterr().err
    assert cli.main([*base, "--bands", "B02,,B04"]) == 2
    assert "--bands must name every band" in capsys.readouterr().err
    assert cli.main([*base, "--bands", "b2,B3,red,nir,scl", "--scale", "0.0001"]) == 0
    bands, class_bands = cli_db.execute("SELECT bands, class_bands FROM cbm.extraction").fetchone()
    assert (bands, class_bands) == (["B02", "B03", "B04", "B08"], ["SCL"])
    red = cli_db.execute("SELECT DISTINCT round(stats[18]::numeric, 4) FROM cbm.parcel_obs").fetchall()
    assert red == [(Decimal("0.04"),)]  # B04's mean, the third band's block of 8
    counts = cli_db.execute("SELECT counts[5] FROM cbm.parcel_class_counts").fetchall()
    assert counts and all(n > 0 for (n,) in counts)  # class 4 (vegetation) counted
    assert cli.main(base) == 0  # a re-run reads the bands as registered
    assert cli_db.execute("SELECT bands FROM cbm.extraction").fetchone() == (["B02", "B03", "B04", "B08"],)
    assert cli.main([*base, "--bands", "B02,B03,B04,B8A,SCL", "--scale", "0.0001"]) == 2
    assert "--bands/--scale/--offset say otherwise" in capsys.readouterr().err


def test_acquisition_time_from_the_file(cli_db: psycopg.Connection, tmp_path: Path) -> None:
    image = _image(tmp_path, "tagged.tif", seed=2, tags={"TIFFTAG_DATETIME": "2018:07:09 11:00:00"})
    assert cli.main(["extract", str(image), "--aoi", "cli", "--year", "2018"]) == 0
    row = cli_db.execute("SELECT acquired_at, product_type FROM cbm.product").fetchone()
    assert row == (datetime(2018, 7, 9, 11, tzinfo=UTC), "UNKNOWN")


def _extract_two_dates(tmp_path: Path) -> None:
    for day, seed in ((1, 3), (6, 4)):
        image = _image(tmp_path, f"S2_201806{day:02d}.tif", seed=seed)
        assert cli.main(["extract", str(image), "--aoi", "cli", "--year", "2018"]) == 0


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_round_trips(cli_db: psycopg.Connection, tmp_path: Path, suffix: str) -> None:
    _extract_two_dates(tmp_path)
    out = tmp_path / f"series{suffix}"
    assert cli.main(["timeseries", "export", "--aoi", "cli", "--year", "2018", "--out", str(out)]) == 0
    classes = tmp_path / f"series_classes{suffix}"
    if suffix == ".csv":
        convert = pa_csv.ConvertOptions(column_types=BAND_STATS_SCHEMA)
        table = pa_csv.read_csv(out, convert_options=convert)
        class_table = pa_csv.read_csv(classes, convert_options=pa_csv.ConvertOptions(column_types=CLASS_COUNTS_SCHEMA))
    else:
        table, class_table = pq.read_table(out), pq.read_table(classes)
    assert table.schema.names == list(BAND_STATS_SCHEMA.names) and table.num_rows == 2 * 4
    assert table.column("obs_time").type == pa.timestamp("us", tz="UTC") or suffix == ".csv"
    expected = cli_db.execute(
        "SELECT p.parcel_id, v.product_id, v.band, v.count, v.mean, v.std, v.min, v.max, v.p25, v.p50, v.p75 "
        "FROM cbm.parcel_band_stats v JOIN cbm.parcel p USING (parcel_set_id, parcel_key) "
        "ORDER BY v.parcel_key, v.obs_time").fetchall()
    rows = table.to_pylist()
    assert [(r["parcel_id"], r["product_id"], r["band"], r["count"]) for r in rows] == [e[:4] for e in expected]
    for row, exp in zip(rows, expected, strict=True):
        got = np.array([row[c] for c in ("mean", "std", "min", "max", "p25", "p50", "p75")], np.float32)
        np.testing.assert_array_equal(got, np.array(exp[4:], np.float32))  # float32 exactly
    assert {r["source"] for r in rows} == {"UNKNOWN"} and rows[0]["obs_time"].year == 2018
    stored = cli_db.execute("SELECT sum(n) FROM cbm.parcel_class_counts, unnest(counts) AS n").fetchone()
    assert stored is not None and sum(class_table.column("count").to_pylist()) == stored[0]
    assert class_table.schema.names == list(CLASS_COUNTS_SCHEMA.names)
    assert set(class_table.column("band").to_pylist()) == {"SCL"} and min(class_table.column("count").to_pylist()) > 0


def test_export_refuses_other_formats(cli_db: psycopg.Connection, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=r"extension must be one of \.csv, \.parquet, got '\.xlsx'"):
        export_time_series(cli_db, aoi="cli", year=2018, out=tmp_path / "series.xlsx")
    assert not list(tmp_path.iterdir())


def test_export_of_a_season_without_images(cli_db: psycopg.Connection, tmp_path: Path) -> None:
    for suffix in (".csv", ".parquet"):
        result = export_time_series(cli_db, aoi="cli", year=2018, out=tmp_path / f"empty{suffix}")
        assert (result.n_rows, result.n_class_rows) == (0, 0)
        table = pa_csv.read_csv(result.path) if suffix == ".csv" else pq.read_table(result.path)
        assert table.schema.names == list(BAND_STATS_SCHEMA.names) and table.num_rows == 0
        assert result.classes_path == tmp_path / f"empty_classes{suffix}" and result.classes_path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "empty.csv", "empty.parquet", "empty_classes.csv", "empty_classes.parquet"]


def test_extract_cli_keeps_labels_on_disk(cli_db: psycopg.Connection, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBM_LABEL_CACHE_DIR", str(tmp_path / "labels"))
    first, second = _image(tmp_path, "S2_20180601.tif", seed=5), _image(tmp_path, "S2_20180606.tif", seed=6)
    assert cli.main(["extract", str(first), "--aoi", "cli", "--year", "2018"]) == 0
    (labels,) = (tmp_path / "labels").glob("labels_*.npy")  # one grid: one label raster
    cached = np.load(labels)
    assert cached.max() == 4
    # the next image of the grid takes its labels from that file: with parcel 4 erased there, it has no row
    np.save(labels, np.where(cached == 4, 0, cached).astype(np.int32))
    assert cli.main(["extract", str(second), "--aoi", "cli", "--year", "2018"]) == 0
    assert list((tmp_path / "labels").glob("labels_*.npy")) == [labels]
    per_image = cli_db.execute("SELECT p.uid, count(*) FROM cbm.parcel_obs o JOIN cbm.product p USING (product_id) "
                               "GROUP BY p.uid ORDER BY p.uid").fetchall()
    assert per_image == [(str(first.resolve()), 4), (str(second.resolve()), 3)]


def test_label_cache_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cbm_tasks.errors import ConfigError
    from cbm_tasks.ops import settings

    monkeypatch.setenv("CBM_LABEL_CACHE_DIR", str(tmp_path / "labels"))
    monkeypatch.setenv("CBM_LABEL_CACHE_GB", "lots")
    with pytest.raises(ConfigError, match="CBM_LABEL_CACHE_GB"):
        settings.label_cache()
    monkeypatch.setenv("CBM_LABEL_CACHE_GB", "1")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("CBM_LABEL_CACHE_DIR", str(tmp_path / "file" / "labels"))
    with pytest.raises(ConfigError, match="CBM_LABEL_CACHE_DIR"):
        settings.label_cache()
