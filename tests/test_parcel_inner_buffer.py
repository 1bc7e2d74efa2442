"""An inner buffer per parcel set: the extraction reads the parcels shrunk by it, edge pixels left out.

A 100 m field whose outer ring of pixels is its neighbour's signal (900) around its own (100), and
a strip narrower than twice the buffer; imported with ``cbm parcels import --inner-buffer 10``,
extracted from a GeoTIFF, imported again with the buffer kept and removed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import psycopg
import pyogrio.raw
import pyproj
import pytest
import shapely
from affine import Affine
from test_extract_support import write_tif

from cbm_tasks.api.auth import Principal
from cbm_tasks.api.queries import aoi_parcel_sets
from cbm_tasks.errors import ParcelImportError
from cbm_tasks.parcels.sets import import_parcels
from cbm_tasks.pipeline.files import extract_file
from cbm_tasks.store import StoreConfig, open_store

X0, Y0 = 500000, 5600300
TRANSFORM = Affine(10, 0, X0, 0, -10, Y0)
FIELD = shapely.box(X0 + 50, Y0 - 150, X0 + 150, Y0 - 50)  # pixels rows 5..14, columns 5..14
STRIP = shapely.box(X0 + 200, Y0 - 150, X0 + 214, Y0 - 50)  # one column of pixel centres, 14 m wide
SCALE = 1e-4


def _register(path: Path, crs: str = "EPSG:32631") -> Path:
    to_crs = pyproj.Transformer.from_crs("EPSG:32631", crs, always_xy=True)
    geoms = shapely.transform(shapely.segmentize(np.array([FIELD, STRIP], dtype=object), 1.0),
                              lambda xy: np.column_stack(to_crs.transform(xy[:, 0], xy[:, 1])))
    pyogrio.raw.write(path, shapely.to_wkb(geoms),
                      [np.array(["field", "strip"], dtype=object), np.array(["9120", "9120"], dtype=object),
                       np.array(["grass", "grass"], dtype=object)],
                      ["parcel_id", "crop_code", "crop_name"], driver="GPKG", geometry_type="Polygon", crs=crs)
    return path


def _image(path: Path) -> Path:
    b04 = np.zeros((30, 30), np.uint16)
    b04[5:15, 5:15] = 900  # the field's edge pixels: its neighbour's signal
    b04[6:14, 6:14] = 100  # the field itself
    b04[5:15, 20] = 300  # the strip
    return write_tif(path, b04, transform=TRANSFORM, nodata=0, descriptions=["B04"], scales=[SCALE], offsets=[0.0],
                     tags={"ACQUISITION_TIME": "2018-06-01T10:30:00Z"})


def _v(dn: float) -> float:
    return round(dn * SCALE, 6)


def _stats(conn: psycopg.Connection) -> dict[str, tuple[int, float]]:
    rows = conn.execute("SELECT p.parcel_id, o.stats[1], o.stats[2] FROM cbm.parcel_obs o JOIN cbm.parcel p "
                        "USING (parcel_set_id, parcel_key) ORDER BY 1").fetchall()
    conn.commit()
    return {pid: (int(count), round(float(mean), 6)) for pid, count, mean in rows}


def test_the_extraction_reads_the_shrunk_parcels_and_a_new_buffer_extracts_again(
        conn: psycopg.Connection, db_url: str, tmp_path: Path) -> None:
    register, image = _register(tmp_path / "parcels.gpkg"), _image(tmp_path / "S2_20180601.tif")
    done = subprocess.run([str(Path(sys.executable).parent / "cbm"), "parcels", "import", str(register), "--aoi",
                           "edges", "--year", "2018", "--inner-buffer", "10"], capture_output=True, text=True,
                          env=os.environ | {"CBM_DATABASE_URL": db_url}, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "inner buffer 10 m: the extraction reads the parcels shrunk by it; 1 parcels too small" in done.stdout
    listed = subprocess.run([str(Path(sys.executable).parent / "cbm"), "parcels", "list"], capture_output=True,
                            text=True, env=os.environ | {"CBM_DATABASE_URL": db_url}, timeout=60, check=True)
    assert listed.stdout.splitlines()[1].split()[:6] == ["edges", "2018", "1", "2", "32631", "-10"]
    shapes = conn.execute("SELECT p.parcel_id, round(ST_Area(p.geom)), round(ST_Area(p.geom_inner)), "
                          "s.inner_buffer_m FROM cbm.parcel p JOIN cbm.parcel_set s USING (parcel_set_id) "
                          "ORDER BY 1").fetchall()
    # the declared geometry stays; the field is 80 x 80 m inside, the strip too narrow to keep any
    assert shapes == [("field", 10000, 6400, 10), ("strip", 1400, None, 10)]
    # an analyst sees it in the API's list of parcel sets
    (listed_set,) = aoi_parcel_sets(conn, Principal("ann", 1, frozenset({"edges"})))
    assert (listed_set["aoi"], listed_set["inner_buffer_m"]) == ("edges", 10)
    conn.commit()

    store = open_store(StoreConfig())
    extract_file(conn, store, image, aoi="edges", year=2018)
    # the field's 8 x 8 inner pixels only; the strip from its whole geometry
    assert _stats(conn) == {"field": (64, _v(100)), "strip": (10, _v(300))}

    # imported again without naming a buffer: the set keeps its 10 m, no parcel changed, the rows stay
    kept = import_parcels(conn, register, aoi="edges", year=2018)
    assert (kept.inner_buffer_m, kept.n_unbuffered, kept.n_changed, kept.n_stale_rows) == (10, 1, 0, 0)
    assert _stats(conn) == {"field": (64, _v(100)), "strip": (10, _v(300))}

    # without a buffer every parcel's extraction geometry changed: its rows go and are extracted again
    whole = import_parcels(conn, register, aoi="edges", year=2018, inner_buffer_m=0)
    assert (whole.inner_buffer_m, whole.n_changed, whole.n_stale_rows) == (0, 2, 2)
    assert conn.execute("SELECT count(*) FROM cbm.parcel WHERE geom_inner IS NOT NULL").fetchone() == (0,)
    conn.commit()
    extract_file(conn, store, image, aoi="edges", year=2018)
    assert _stats(conn) == {"field": (100, _v((36 * 900 + 64 * 100) / 100)), "strip": (10, _v(300))}
    options = conn.execute("SELECT options->>'inner_buffer_m' FROM cbm.parcel_import ORDER BY import_id").fetchall()
    assert options == [("10",), ("10",), ("0",)]


def test_a_lon_lat_register_is_shrunk_in_metres_on_the_spheroid(conn: psycopg.Connection, tmp_path: Path) -> None:
    report = import_parcels(conn, _register(tmp_path / "wgs84.gpkg", "EPSG:4326"), aoi="lonlat", year=2018,
                            inner_buffer_m=10)
    assert (report.srid, report.n_unbuffered) == (4326, 1)
    (inner,) = conn.execute("SELECT ST_Area(geom_inner::geography) FROM cbm.parcel WHERE parcel_id = 'field'"
                            ).fetchone() or (None,)
    assert inner == pytest.approx(6400, rel=0.01)


def test_a_buffer_the_crs_cannot_measure_in_metres_is_refused(conn: psycopg.Connection, tmp_path: Path) -> None:
    feet = _register(tmp_path / "feet.gpkg", "EPSG:2227")  # California zone 3, US survey feet
    with pytest.raises(ParcelImportError, match=r"needs a CRS in metres or degrees; EPSG:2227 is in other units"):
        import_parcels(conn, feet, aoi="feet", year=2018, inner_buffer_m=10)
    with pytest.raises(ParcelImportError, match=r"inner buffer 101 m is outside 0\.\.100 m"):
        import_parcels(conn, _register(tmp_path / "utm.gpkg"), aoi="far", year=2018, inner_buffer_m=101)
    assert conn.execute("SELECT count(*) FROM cbm.parcel_set s JOIN cbm.aoi a USING (aoi_id) "
                        "WHERE a.name IN ('feet', 'far')").fetchone() == (0,)
    # without a buffer the register in feet imports as before
    assert import_parcels(conn, feet, aoi="feet", year=2018).inner_buffer_m == 0


def test_one_definition_tells_a_geographic_crs(conn: psycopg.Connection) -> None:
    # cbm.srid_is_geographic: the overlaps, the buffer's unit check, the report's areas and the API's distances
    asked = {srid: conn.execute("SELECT cbm.srid_is_geographic(%s)", (srid,)).fetchone()
             for srid in (4326, 4258, 32631, 3035, 2227, 999999)}
    # WGS 84 and ETRS89 in degrees; UTM, LAEA Europe and a CRS in feet projected; an unknown SRID not geographic
    assert asked == {4326: (True,), 4258: (True,), 32631: (False,), 3035: (False,), 2227: (False,), 999999: (False,)}
