"""Bad parcel files fail with a message naming the file or the column, and leave the database as it was."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio.raw
import pytest
import shapely
from conftest import shared_data

from cbm_tasks.errors import ParcelImportError
from cbm_tasks.parcels.sets import import_parcels

NL = "nl_brp_2023.gpkg"


def state(conn: psycopg.Connection) -> list[tuple[object, ...]]:
    return [
        *conn.execute("SELECT * FROM cbm.aoi ORDER BY 1"),
        *conn.execute("SELECT parcel_set_id, srid, version, n_parcels, imported_at FROM cbm.parcel_set ORDER BY 1"),
        *conn.execute(
            "SELECT parcel_set_id, parcel_key, parcel_id, md5(ST_AsEWKB(geom)) FROM cbm.parcel ORDER BY 1, 2"
        ),
        *conn.execute("SELECT import_id FROM cbm.parcel_import ORDER BY 1"),
        *conn.execute("SELECT import_id, source_fid FROM cbm.parcel_rejection ORDER BY 1, 2"),
    ]


@pytest.fixture
def baseline(conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """A database holding the NL register as AOI 'nl' 2023; asserts it is unchanged after the test."""
    import_parcels(conn, shared_data("parcels", NL), aoi="nl", year=2023)
    conn.commit()
    before = state(conn)
    yield conn
    conn.rollback()
    assert state(conn) == before


def geojson(path: Path, features: list[tuple[dict[str, Any], dict[str, Any] | None]]) -> Path:
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [{"type": "Feature", "properties": p, "geometry": g} for p, g in features],
            }
        )
    )
    return path


def square(x: float = 5.0, y: float = 52.0, d: float = 0.001) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[[x, y], [x + d, y], [x + d, y + d], [x, y + d], [x, y]]]}


def write_gpkg(path: Path, ids: list[str], *, crs: str | None, layer: str = "parcels", append: bool = False) -> Path:
    geoms = [shapely.box(1000 * i, 0, 1000 * i + 100, 100) for i in range(len(ids))]
    pyogrio.raw.write(
        path,
        shapely.to_wkb(np.array(geoms, dtype=object)),
        [np.array(ids, dtype=object), np.array(["265"] * len(ids), dtype=object)],
        ["parcel_id", "crop_code"],
        driver="GPKG",
        geometry_type="Polygon",
        crs=crs,
        layer=layer,
        append=append,
    )
    return path


def test_missing_file(baseline: psycopg.Connection, tmp_path: Path) -> None:
    with pytest.raises(ParcelImportError, match=r"parcel file .*nowhere\.gpkg does not exist"):
        import_parcels(baseline, tmp_path / "nowhere.gpkg", aoi="nl", year=2023)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("random.gpkg", os.urandom(4096)),
        ("truncated.gpkg", shared_data("parcels", NL).read_bytes()[:8192]),
        ("notes.geojson", b"this is not json"),
        ("empty.shp", b""),
    ],
)
def test_unreadable_file(baseline: psycopg.Connection, tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ParcelImportError, match=rf"{name}: not a vector format GDAL can read"):
        import_parcels(baseline, path, aoi="nl", year=2023)


def test_zip_without_vector_data(baseline: psycopg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "readme.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("README.txt", "no parcels here")
    with pytest.raises(ParcelImportError, match=r"readme\.zip: not a vector format"):
        import_parcels(baseline, path, aoi="nl", year=2023)


def test_no_crs_needs_srid(baseline: psycopg.Connection, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="crs"):  # pyogrio warns when writing without a CRS
        path = write_gpkg(tmp_path / "nocrs.gpkg", ["a", "b"], crs=None)
    with pytest.raises(ParcelImportError, match=r"nocrs\.gpkg: the layer declares no CRS; pass --srid"):
        import_parcels(baseline, path, aoi="nl", year=2023, crop_name_column="-")
    report = import_parcels(baseline, path, aoi="nocrs", year=2023, srid=28992, crop_name_column="-")
    assert (report.srid, report.n_imported) == (28992, 2)
    assert baseline.execute(
        "SELECT DISTINCT ST_SRID(geom) FROM cbm.parcel WHERE parcel_set_id = %s", (report.parcel_set_id,)
    ).fetchall() == [(28992,)]


def test_srid_contradicting_the_file(baseline: psycopg.Connection) -> None:
    with pytest.raises(ParcelImportError, match=rf"{NL}: the layer's CRS is EPSG:28992 .* but srid 4326 was given"):
        import_parcels(baseline, shared_data("parcels", NL), aoi="nl", year=2023, srid=4326)
    with pytest.raises(ParcelImportError, match=r"srid 999999 is not an EPSG code"):
        import_parcels(baseline, shared_data("parcels", NL), aoi="nl", year=2023, srid=999999)


def test_custom_crs_without_epsg_code(baseline: psycopg.Connection, tmp_path: Path) -> None:
    wkt = (
        'PROJCS["custom laea",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
        'PRIMEM["Greenwich",0],UNIT["Degree",0.0174532925199433]],PROJECTION["Lambert_Azimuthal_Equal_Area"],'
        'PARAMETER["latitude_of_center",51.1],PARAMETER["longitude_of_center",7.3],PARAMETER["false_easting",0],'
        'PARAMETER["false_northing",0],UNIT["Meter",1]]'
    )
    path = write_gpkg(tmp_path / "custom.gpkg", ["a"], crs=wkt)
    with pytest.raises(ParcelImportError, match=r"custom\.gpkg: the layer's CRS \(custom laea\) has no EPSG code"):
        import_parcels(baseline, path, aoi="nl", year=2023)
    with pytest.raises(ParcelImportError, match=r"custom\.gpkg: the layer's CRS \(custom laea\) is not EPSG:3035"):
        import_parcels(baseline, path, aoi="nl", year=2023, srid=3035)


def test_duplicate_parcel_ids(baseline: psycopg.Connection, tmp_path: Path) -> None:
    path = geojson(
        tmp_path / "dups.geojson",
        [({"parcel_id": pid, "crop_code": "1", "crop_name": "x"}, square(5 + i * 0.01)) for i, pid in
         enumerate(["A-1", "B-2", "A-1", "C-3", "B-2", "A-1"])],
    )  # fmt: skip
    with pytest.raises(
        ParcelImportError,
        match=r"dups\.geojson: 2 parcel id\(s\) in parcel_id occur more than once: 'A-1' at features 0, 2, 5; "
        r"'B-2' at features 1, 4; the register must be corrected",
    ):
        import_parcels(baseline, path, aoi="nl", year=2023)


def test_dk_field_numbers_alone_are_not_unique(baseline: psycopg.Connection) -> None:
    with pytest.raises(ParcelImportError,
                       match=r"dk_2026_shp\.zip/\w+\.shp: \d+ parcel id\(s\) in Marknr occur more than once"):
        import_parcels(baseline, shared_data("parcels", "dk_2026_shp.zip"), aoi="nl", year=2023, id_column="Marknr")
    report = import_parcels(
        baseline, shared_data("parcels", "dk_2026_shp.zip"), aoi="dk", year=2026, id_column="journalnr, MARKNR"
    )
    assert report.n_imported == 100  # composite, case-insensitive: same ids as auto-detection


def test_unknown_column_lists_the_columns(baseline: psycopg.Connection) -> None:
    with pytest.raises(
        ParcelImportError,
        match=rf"{NL}: column 'perceel' given as --id-column does not exist; "
        r"columns are: id, category, gewas, gewascode",
    ):
        import_parcels(baseline, shared_data("parcels", NL), aoi="nl", year=2023, id_column="perceel")
    with pytest.raises(ParcelImportError, match=r"column 'GWSCOD_H' given as --crop-code-column does not exist"):
        import_parcels(baseline, shared_data("parcels", NL), aoi="nl", year=2023, crop_code_column="GWSCOD_H")


def test_missing_and_ambiguous_columns(baseline: psycopg.Connection, tmp_path: Path) -> None:
    nameless = geojson(tmp_path / "nameless.geojson", [({"naam": "x", "crop_code": "1"}, square())])
    with pytest.raises(
        ParcelImportError,
        match=r"nameless\.geojson: no parcel id column found among: naam, crop_code; name it with --id-column",
    ):
        import_parcels(baseline, nameless, aoi="nl", year=2023)
    with pytest.raises(ParcelImportError, match=r"column 'naam_nl' given as --crop-name-column does not exist"):
        import_parcels(baseline, nameless, aoi="nl", year=2023, id_column="naam", crop_name_column="naam_nl")
    # a crop column not found is a warning: the parcels are imported without (rolled back by the fixture)
    report = import_parcels(baseline, nameless, aoi="nameless", year=2023, id_column="naam")
    assert report.n_imported == 1 and baseline.execute(
        "SELECT parcel_id, crop_code, crop_name FROM cbm.parcel WHERE parcel_set_id = %s", (report.parcel_set_id,)
    ).fetchall() == [("x", "1", None)]
    codeless = geojson(tmp_path / "codeless.geojson", [({"naam": "x", "gewas": "gras"}, square())])
    report = import_parcels(baseline, codeless, aoi="codeless", year=2023, id_column="naam")
    assert report.columns is not None and (report.columns.crop_code, report.columns.crop_name) == (None, "gewas")
    with pytest.raises(ParcelImportError, match=r"codeless\.geojson: column 'teelt' given as --crop-code-column"):
        import_parcels(baseline, codeless, aoi="codeless2", year=2023, id_column="naam", crop_code_column="teelt")
    both = geojson(tmp_path / "both.geojson", [({"REF_ID": 1, "GEO_ID": 2, "crop_code": "1"}, square())])
    with pytest.raises(ParcelImportError, match=r"both\.geojson: ambiguous parcel id column: REF_ID or GEO_ID"):
        import_parcels(baseline, both, aoi="nl", year=2023)
    cased = geojson(tmp_path / "cased.geojson", [({"ID": 1, "id": 2, "crop_code": "1"}, square())])
    with pytest.raises(ParcelImportError, match=r"cased\.geojson: ambiguous parcel id column: ID,id"):
        import_parcels(baseline, cased, aoi="nl", year=2023)


def test_no_crop_columns_when_declared(conn: psycopg.Connection, tmp_path: Path) -> None:
    path = geojson(tmp_path / "ids_only.geojson", [({"parcel_id": "p1"}, square())])
    report = import_parcels(conn, path, aoi="ids", year=2023, crop_code_column="-", crop_name_column="-")
    assert report.n_imported == 1
    assert conn.execute("SELECT parcel_id, crop_code, crop_name FROM cbm.parcel").fetchall() == [("p1", None, None)]


def test_layers(baseline: psycopg.Connection, tmp_path: Path) -> None:
    path = write_gpkg(tmp_path / "two.gpkg", ["a"], crs="EPSG:28992", layer="brp_2023")
    write_gpkg(path, ["b", "c"], crs="EPSG:28992", layer="brp_2024", append=True)
    with pytest.raises(
        ParcelImportError, match=r"two\.gpkg: several layers \(brp_2023, brp_2024\); choose one with --layer"
    ):
        import_parcels(baseline, path, aoi="nl", year=2023)
    with pytest.raises(ParcelImportError, match=r"two\.gpkg: no layer 'brp_2025'; layers are: brp_2023, brp_2024"):
        import_parcels(baseline, path, aoi="nl", year=2023, layer="brp_2025")
    report = import_parcels(baseline, path, aoi="layers", year=2024, layer="brp_2024", crop_name_column="-")
    assert report.n_imported == 2
    assert baseline.execute(
        "SELECT source_layer FROM cbm.parcel_set WHERE parcel_set_id = %s", (report.parcel_set_id,)
    ).fetchone() == ("brp_2024",)


def test_nothing_importable(baseline: psycopg.Connection, tmp_path: Path) -> None:
    lines = geojson(
        tmp_path / "lines.geojson",
        [
            (
                {"parcel_id": "l1", "crop_code": "1", "crop_name": "x"},
                {"type": "LineString", "coordinates": [[5, 52], [5.1, 52]]},
            )
        ],
    )
    with pytest.raises(
        ParcelImportError, match=r"lines\.geojson: no importable parcel \(1 features read, all rejected\)"
    ):
        import_parcels(baseline, lines, aoi="nl", year=2023)


def test_bad_aoi_or_year(baseline: psycopg.Connection) -> None:
    with pytest.raises(ParcelImportError, match=r"AOI name 'NL-2023' is invalid"):
        import_parcels(baseline, shared_data("parcels", NL), aoi="NL-2023", year=2023)
    with pytest.raises(ParcelImportError, match=r"year 1999 is outside 2014..2100"):
        import_parcels(baseline, shared_data("parcels", NL), aoi="nl", year=1999)


def test_bad_geoparquet(baseline: psycopg.Connection, tmp_path: Path) -> None:
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"parcel_id": ["a"], "geometry": [shapely.to_wkb(shapely.box(0, 0, 1, 1))]}), plain)
    with pytest.raises(ParcelImportError, match=r"plain\.parquet: a Parquet file without GeoParquet 'geo' metadata"):
        import_parcels(baseline, plain, aoi="nl", year=2023)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(ParcelImportError, match=r"broken\.parquet: not a readable Parquet file"):
        import_parcels(baseline, broken, aoi="nl", year=2023)
    unknown_crs = tmp_path / "unknown_crs.parquet"
    geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": {"encoding": "WKB", "crs": None}}}
    table = pa.table(
        {
            "parcel_id": ["a"],
            "crop_code": ["1"],
            "crop_name": ["x"],
            "geometry": [shapely.to_wkb(shapely.box(0, 0, 1, 1))],
        }
    )
    pq.write_table(table.replace_schema_metadata({b"geo": json.dumps(geo).encode()}), unknown_crs)
    with pytest.raises(ParcelImportError, match=r"unknown_crs\.parquet: the layer declares no CRS"):
        import_parcels(baseline, unknown_crs, aoi="nl", year=2023)
