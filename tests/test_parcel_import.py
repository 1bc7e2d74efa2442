"""Parcel import into the real PostGIS: the shared registers, re-imports, atomicity, the CLI."""

from __future__ import annotations

import csv
import json
import math
import struct
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import pyogrio.raw
import pyproj
import pytest
import shapely
from conftest import shared_data
from test_extract_support import wait_until_waiting_on_a_lock
from test_parcel_bad_input import write_gpkg

from cbm_tasks.cli import main
from cbm_tasks.errors import ParcelImportError
from cbm_tasks.parcels import sets as parcel
from cbm_tasks.parcels.sets import import_parcels, list_parcel_sets

# file, EPSG, parcel id of the first feature, its crop code, lon/lat box the extent must fall in
REGISTERS = [
    ("nl_brp_2023.gpkg", 28992, "1", "343", (3.2, 50.7, 7.3, 53.7)),
    ("be_vlg_2023_gpkg.zip", 31370, "487348814", "381", (2.5, 50.6, 6.0, 51.6)),
    ("at_2025_gpkg.zip", 31287, "106806035", "717", (9.5, 46.3, 17.2, 49.1)),
    ("dk_2026_shp.zip", 25832, "26-0023282/1-0", "593", (8.0, 54.5, 15.3, 57.8)),
    ("fi_gsaa.gpkg", 3067, "0040000372/1", "9409", (19.0, 59.7, 31.6, 70.1)),
]
# declared area column (hectares) of the registers that publish one
DECLARED_HA = {
    "be_vlg_2023_gpkg.zip": "GRAF_OPP",
    "at_2025_gpkg.zip": "SL_FLAECHE_BRUTTO_HA",
    "dk_2026_shp.zip": "IMK_areal",
    "fi_gsaa.gpkg": "PINTA_ALA",
}


def set_state(conn: psycopg.Connection) -> list[tuple[object, ...]]:
    """Everything an import writes, to compare before and after a failed import."""
    return [
        *conn.execute("SELECT parcel_set_id, srid, version, n_parcels, source_file FROM cbm.parcel_set ORDER BY 1"),
        *conn.execute("SELECT parcel_set_id, parcel_key, parcel_id, crop_code, md5(ST_AsEWKB(geom)) FROM cbm.parcel"),
        *conn.execute("SELECT import_id, n_imported FROM cbm.parcel_import ORDER BY 1"),
        *conn.execute("SELECT import_id, source_fid FROM cbm.parcel_rejection ORDER BY 1, 2"),
    ]


def add_obs(conn: psycopg.Connection, set_id: int) -> None:
    """Give every parcel of the set one parcel_obs and one class-count row (product 1)."""
    conn.execute(
        "INSERT INTO cbm.parcel_obs SELECT parcel_set_id, parcel_key, 1, ARRAY[1,2,3,4,5,6,7,8]::real[] "
        "FROM cbm.parcel WHERE parcel_set_id = %s",
        (set_id,),
    )
    conn.execute(
        "INSERT INTO cbm.parcel_class_counts SELECT parcel_set_id, parcel_key, 1, 1, ARRAY[0,5,3]::int[] "
        "FROM cbm.parcel WHERE parcel_set_id = %s",
        (set_id,),
    )
    conn.commit()


@pytest.mark.parametrize(("name", "epsg", "first_id", "first_code", "box"), REGISTERS, ids=[r[0] for r in REGISTERS])
def test_all_shared_registers(
    conn: psycopg.Connection, name: str, epsg: int, first_id: str, first_code: str, box: tuple[float, ...]
) -> None:
    report = import_parcels(conn, shared_data("parcels", name), aoi="test", year=2023)
    assert (report.n_read, report.n_imported, report.n_rejected, report.srid) == (100, 100, 0, epsg)
    assert (report.version, report.n_new, report.n_changed, report.n_removed) == (1, 100, 0, 0)
    row = conn.execute(
        "SELECT srid, version, n_parcels, ST_XMin(extent), ST_YMin(extent), ST_XMax(extent), ST_YMax(extent), "
        "ST_SRID(extent) FROM cbm.parcel_set WHERE parcel_set_id = %s",
        (report.parcel_set_id,),
    ).fetchone()
    assert row is not None
    assert row[:3] == (epsg, 1, 100)
    assert row[7] == 4326
    xmin, ymin, xmax, ymax = row[3:7]
    assert box[0] < xmin < xmax < box[2] and box[1] < ymin < ymax < box[3]
    stats = conn.execute(
        "SELECT count(*), min(parcel_key), max(parcel_key), count(DISTINCT parcel_id), "
        "bool_and(ST_GeometryType(geom) = 'ST_MultiPolygon' AND ST_SRID(geom) = %s AND ST_NDims(geom) = 2 "
        "AND ST_IsValid(geom)), max(abs(area_m2 - ST_Area(geom)) / ST_Area(geom)), sum(area_m2) "
        "FROM cbm.parcel WHERE parcel_set_id = %s",
        (epsg, report.parcel_set_id),
    ).fetchone()
    assert stats is not None
    assert stats[:5] == (100, 1, 100, 100, True)
    assert stats[5] < 1e-6
    first = conn.execute(
        "SELECT parcel_id, crop_code, crop_name IS NOT NULL FROM cbm.parcel "
        "WHERE parcel_set_id = %s AND parcel_key = 1",
        (report.parcel_set_id,),
    ).fetchone()
    assert first == (first_id, first_code, True)
    if name in DECLARED_HA:  # the agency's own areas (rounded to 0.01 ha in DK) agree with ours
        _, table = pyogrio.read_arrow(shared_data("parcels", name), columns=[DECLARED_HA[name]])
        declared_m2 = float(np.sum(table[DECLARED_HA[name]].to_numpy())) * 1e4
        assert stats[6] == pytest.approx(declared_m2, rel=5e-3)
    partitions = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
        (f"cbm.parcel_obs_{report.parcel_set_id}", f"cbm.parcel_class_counts_{report.parcel_set_id}"),
    ).fetchone()
    assert partitions == (True,)
    logged = conn.execute(
        "SELECT n_read, n_imported, n_repaired, n_rejected, options FROM cbm.parcel_import"
    ).fetchall()
    assert len(logged) == 1 and logged[0][:4] == (100, 100, 0, 0)
    assert logged[0][4]["srid"] == epsg


def test_reimport_same_file_is_idempotent(conn: psycopg.Connection) -> None:
    path = shared_data("parcels", "nl_brp_2023.gpkg")
    first = import_parcels(conn, path, aoi="nl", year=2023)
    keys = dict(conn.execute("SELECT parcel_id, parcel_key FROM cbm.parcel").fetchall())
    add_obs(conn, first.parcel_set_id)
    second = import_parcels(conn, path, aoi="nl", year=2023)
    assert second.parcel_set_id == first.parcel_set_id
    assert (second.version, second.n_new, second.n_changed, second.n_removed, second.n_stale_rows) == (2, 0, 0, 0, 0)
    assert dict(conn.execute("SELECT parcel_id, parcel_key FROM cbm.parcel").fetchall()) == keys
    assert conn.execute("SELECT count(*) FROM cbm.parcel").fetchone() == (100,)
    assert conn.execute("SELECT count(*) FROM cbm.parcel_obs").fetchone() == (100,)
    assert conn.execute("SELECT count(*), max(version) FROM cbm.parcel_set").fetchone() == (1, 2)
    assert conn.execute("SELECT count(*) FROM cbm.parcel_import").fetchone() == (2,)


def write_modified_nl(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """NL BRP with ids 1-3 removed, the geometry of 4 moved, the crop of 5 changed, ids 9001 and 9002 new."""
    meta, table = pyogrio.read_arrow(shared_data("parcels", "nl_brp_2023.gpkg"), return_fids=True)
    ids = [str(v) for v in table["id"].to_pylist()]
    geoms = shapely.from_wkb(np.array(table["geom"].to_pylist(), dtype=object))
    codes = table["gewascode"].to_numpy().copy()
    names = np.array(table["gewas"].to_pylist(), dtype=object)
    geoms[ids.index("4")] = shapely.affinity.translate(geoms[ids.index("4")], 25.0, 0.0)
    codes[ids.index("5")] = 999
    keep = [i for i, pid in enumerate(ids) if pid not in {"1", "2", "3"}]
    new_geoms = [shapely.box(100000, 400000, 100100, 400050), shapely.box(100200, 400000, 100300, 400080)]
    out = tmp_path / "nl_changed.gpkg"
    pyogrio.raw.write(
        out,
        shapely.to_wkb(np.concatenate([geoms[keep], np.array(new_geoms, dtype=object)])),
        [
            np.array([*(int(ids[i]) for i in keep), 9001, 9002], dtype=np.int64),
            np.concatenate([codes[keep], [265, 265]]).astype(np.int32),
            np.concatenate([names[keep], ["Grasland, blijvend"] * 2]),
        ],
        ["parcel_id", "gewascode", "gewas"],
        driver="GPKG",
        geometry_type="Polygon",
        crs="EPSG:28992",
        layer="brp_gewas",
    )
    return out, {"removed": "1,2,3", "moved": "4", "crop": "5"}


def test_reimport_changed_set_keeps_keys_and_drops_stale_rows(conn: psycopg.Connection, tmp_path: Path) -> None:
    first = import_parcels(conn, shared_data("parcels", "nl_brp_2023.gpkg"), aoi="nl", year=2023)
    keys_before = dict(conn.execute("SELECT parcel_id, parcel_key FROM cbm.parcel").fetchall())
    add_obs(conn, first.parcel_set_id)
    changed, _ = write_modified_nl(tmp_path)
    report = import_parcels(conn, changed, aoi="nl", year=2023)
    assert (report.n_imported, report.n_new, report.n_changed, report.n_removed) == (99, 2, 1, 3)
    assert report.version == 2 and report.n_stale_rows == 2 * 4  # obs + class counts of 1, 2, 3 and 4
    keys_after = dict(conn.execute("SELECT parcel_id, parcel_key FROM cbm.parcel").fetchall())
    assert {pid: keys_after[pid] for pid in keys_after if pid in keys_before} == {
        pid: key for pid, key in keys_before.items() if pid not in {"1", "2", "3"}
    }
    assert (keys_after["9001"], keys_after["9002"]) == (101, 102)
    with_obs = {
        pid
        for (pid,) in conn.execute(
            "SELECT p.parcel_id FROM cbm.parcel p JOIN cbm.parcel_obs o USING (parcel_set_id, parcel_key)"
        )
    }
    assert with_obs == set(keys_before) - {"1", "2", "3", "4"}  # the crop change of 5 keeps its time series
    stale = [keys_before[pid] for pid in ("1", "2", "3", "4")]
    assert conn.execute(
        "SELECT count(*) FROM cbm.parcel_class_counts WHERE parcel_key = ANY(%s)", (stale,)
    ).fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM cbm.parcel_class_counts").fetchone() == (96,)
    assert conn.execute("SELECT crop_code FROM cbm.parcel WHERE parcel_id = '5'").fetchone() == ("999",)
    assert conn.execute("SELECT n_parcels, source_file FROM cbm.parcel_set").fetchone() == (99, str(changed))


def test_failure_inside_the_transaction_keeps_the_old_set(
    conn: psycopg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import_parcels(conn, shared_data("parcels", "nl_brp_2023.gpkg"), aoi="nl", year=2023)
    before = set_state(conn)
    conn.commit()
    changed, _ = write_modified_nl(tmp_path)

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated crash after the parcels were replaced")

    monkeypatch.setattr(parcel, "update_set", crash)  # the step after the parcels were replaced
    with pytest.raises(RuntimeError, match="simulated crash"):
        import_parcels(conn, changed, aoi="nl", year=2023)
    conn.rollback()
    assert set_state(conn) == before


def test_repairs_and_rejections_are_reported(conn: psycopg.Connection, tmp_path: Path) -> None:
    path = write_mixed_geojson(tmp_path / "mixed.geojson")
    report_csv = tmp_path / "rejected.csv"
    report = import_parcels(conn, path, aoi="mixed", year=2024, reject_report=report_csv)
    assert (report.n_read, report.n_imported, report.n_repaired, report.n_rejected) == (8, 3, 1, 5)
    reasons = {r.parcel_id: r.reason for r in report.rejections}
    assert set(reasons) == {"bowtie", "line", "empty", "null", None}
    assert "Self-intersection" in reasons["bowtie"] and "zero drawn area" in reasons["bowtie"]
    assert reasons["line"] == "not a polygon (LineString)"
    assert reasons["empty"] == "empty geometry"
    assert reasons["null"] == "no geometry"
    assert reasons[None].startswith("no parcel id")
    rows = conn.execute(
        "SELECT source_fid, parcel_id, reason FROM cbm.parcel_rejection r JOIN cbm.parcel_import i USING (import_id) "
        "ORDER BY source_fid"
    ).fetchall()
    assert [(fid, pid) for fid, pid, _ in rows] == [(2, "bowtie"), (3, "line"), (4, "empty"), (5, "null"), (6, None)]
    with report_csv.open() as handle:
        assert [(r["source_fid"], r["parcel_id"]) for r in csv.DictReader(handle)] == [
            ("2", "bowtie"), ("3", "line"), ("4", "empty"), ("5", "null"), ("6", ""),
        ]  # fmt: skip
    stored = dict(conn.execute("SELECT parcel_id, ST_NDims(geom) * 1000 + ST_NumGeometries(geom) FROM cbm.parcel"))
    assert stored == {"square": 2001, "touching": 2002, "with_z": 2001}  # repaired ring split in two, Z dropped
    area = conn.execute("SELECT area_m2 FROM cbm.parcel WHERE parcel_id = 'touching'").fetchone()
    assert area is not None and area[0] == pytest.approx(expected_touching_area_m2(), rel=1e-6)


def write_mixed_geojson(path: Path) -> Path:
    """Eight features in EPSG:4326 around 5 E 52 N: 2 valid, 1 repairable, 5 rejected."""
    x, y, d = 5.0, 52.0, 0.001
    square = [[[x, y], [x + d, y], [x + d, y + d], [x, y + d], [x, y]]]
    # the ring passes through (x + d/2, y), a point of its first edge: invalid, repairable, area kept
    touching = [[[x, y], [x + d, y], [x + d, y + d], [x + d / 2, y], [x, y + d], [x, y]]]
    bowtie = [[[x, y], [x + d, y + d], [x + d, y], [x, y + d], [x, y]]]
    features = [
        ("square", {"type": "Polygon", "coordinates": square}),
        ("touching", {"type": "Polygon", "coordinates": touching}),
        ("bowtie", {"type": "Polygon", "coordinates": bowtie}),
        ("line", {"type": "LineString", "coordinates": [[x, y], [x + d, y]]}),
        ("empty", {"type": "Polygon", "coordinates": []}),
        ("null", None),
        (None, {"type": "Polygon", "coordinates": square}),
        ("with_z", {"type": "Polygon", "coordinates": [[[*p, 12.5] for p in square[0]]]}),
    ]
    collection = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"parcel_id": pid, "crop_code": "1", "crop_name": "x"}, "geometry": geom}
            for pid, geom in features
        ],
    }
    path.write_text(json.dumps(collection))
    return path


def expected_touching_area_m2() -> float:
    x, y, d = 5.0, 52.0, 0.001
    geod = pyproj.Geod(ellps="WGS84")
    left = shapely.Polygon([(x, y), (x + d / 2, y), (x, y + d)])
    right = shapely.Polygon([(x + d / 2, y), (x + d, y), (x + d, y + d)])
    return sum(abs(geod.geometry_area_perimeter(p)[0]) for p in (left, right))


def test_curved_parcels_of_a_geopackage_are_imported_linear(conn: psycopg.Connection, tmp_path: Path) -> None:
    """A register whose plots have circular edges (GML, GeoPackage): kept, made linear, counted as repaired."""
    x, y = 500_000.0, 5_650_000.0
    round_plot = struct.pack("<BII", 1, 10, 1) + struct.pack("<BII6d", 1, 8, 3, x, y, x + 200, y, x, y)
    field = shapely.to_wkb(shapely.box(x + 300, y, x + 400, y + 100))
    path = tmp_path / "curved.gpkg"
    pyogrio.raw.write(path, np.array([round_plot, field], dtype=object),
                      [np.array(["round", "field"], dtype=object), np.array(["265", "265"], dtype=object),
                       np.array(["grass", "grass"], dtype=object)],
                      ["parcel_id", "crop_code", "crop_name"], driver="GPKG", geometry_type="Unknown", crs="EPSG:32631")
    report = import_parcels(conn, path, aoi="curved", year=2024)
    assert (report.n_read, report.n_imported, report.n_repaired, report.n_rejected) == (2, 2, 1, 0)
    areas = dict(conn.execute("SELECT parcel_id, area_m2 FROM cbm.parcel"))
    assert areas["round"] == pytest.approx(math.pi * 100**2, rel=1e-3) and areas["field"] == pytest.approx(10_000)


def test_strict_fails_without_writing(conn: psycopg.Connection, tmp_path: Path) -> None:
    import_parcels(conn, shared_data("parcels", "nl_brp_2023.gpkg"), aoi="mixed", year=2024)
    conn.commit()
    before = set_state(conn)
    path = write_mixed_geojson(tmp_path / "mixed.geojson")
    report_csv = tmp_path / "rejected.csv"
    with pytest.raises(ParcelImportError, match=r"mixed\.geojson: 5 of 8 features rejected and strict"):
        import_parcels(conn, path, aoi="mixed", year=2024, strict=True, reject_report=report_csv)
    assert set_state(conn) == before
    assert len(report_csv.read_text().splitlines()) == 6  # header + 5: the report helps fix the file


def test_geographic_area_is_geodesic(conn: psycopg.Connection, tmp_path: Path) -> None:
    path = write_mixed_geojson(tmp_path / "lonlat.geojson")
    report = import_parcels(conn, path, aoi="lonlat", year=2024)
    assert report.srid == 4326
    area = conn.execute(
        "SELECT area_m2, ST_Area(geom::geography) FROM cbm.parcel WHERE parcel_id = 'square'"
    ).fetchone()
    assert area is not None
    assert area[0] == pytest.approx(area[1], rel=1e-6)  # PostGIS geodesic area on WGS84 agrees
    assert area[0] == pytest.approx(68.7e3 * 111.3e3 * 1e-6, rel=0.01)  # 0.001 deg at 52 N: ~69 m x ~111 m


def write_geoparquet(path: Path) -> Path:
    """The NL BRP register as GeoParquet 1.1 (WKB, PROJJSON CRS)."""
    _, table = pyogrio.read_arrow(shared_data("parcels", "nl_brp_2023.gpkg"), return_fids=True)
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {"geometry": {"encoding": "WKB", "crs": pyproj.CRS.from_epsg(28992).to_json_dict()}},
    }
    out = pa.table(
        {
            "id": table["id"],
            "crop:code": pa.array([str(v) for v in table["gewascode"].to_pylist()]),
            "crop:name": table["gewas"],
            "geometry": pa.array(table["geom"].to_pylist(), pa.binary()),
        }
    )
    pq.write_table(out.replace_schema_metadata({b"geo": json.dumps(geo).encode()}), path)
    return path


def test_geoparquet_and_flatgeobuf(conn: psycopg.Connection, tmp_path: Path) -> None:
    parquet = import_parcels(conn, write_geoparquet(tmp_path / "nl.parquet"), aoi="nl_parquet", year=2023)
    assert (parquet.srid, parquet.n_imported) == (28992, 100)
    _, table = pyogrio.read_arrow(shared_data("parcels", "nl_brp_2023.gpkg"), return_fids=True)
    fgb = tmp_path / "nl.fgb"
    pyogrio.raw.write(
        fgb,
        np.array(table["geom"].to_pylist(), dtype=object),
        [table["id"].to_numpy(), table["gewascode"].to_numpy(), np.array(table["gewas"].to_pylist(), dtype=object)],
        ["ID", "GEWASCODE", "GEWAS"],
        driver="FlatGeobuf",
        geometry_type="Polygon",
        crs="EPSG:28992",
    )
    flat = import_parcels(conn, fgb, aoi="nl_fgb", year=2023)
    assert (flat.srid, flat.n_imported) == (28992, 100)
    same = conn.execute(
        # FlatGeobuf stores features in spatial-index order, so keys differ; ids and shapes agree
        "SELECT count(*) FROM cbm.parcel a JOIN cbm.parcel b USING (parcel_id) "
        "WHERE a.parcel_set_id = %s AND b.parcel_set_id = %s AND ST_Equals(a.geom, b.geom) "
        "AND a.crop_code = b.crop_code AND a.area_m2 = b.area_m2",
        (parquet.parcel_set_id, flat.parcel_set_id),
    ).fetchone()
    assert same == (100,)


def test_cli_import_and_list(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CBM_DATABASE_URL", db_url)
    report_csv = tmp_path / "rejected.csv"
    dk = shared_data("parcels", "dk_2026_shp.zip")
    args = ["parcels", "import", str(dk), "--aoi", "dk", "--year", "2026", "--reject-report", str(report_csv)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "100 of 100 parcels imported, 0 repaired, 0 rejected; 100 new" in out
    assert "columns: parcel id Journalnr,Marknr, crop code Afgkode, crop name Afgroede\n" in out
    assert report_csv.read_text().strip() == "source_fid,parcel_id,reason"
    # a register of field blocks, without crops: imported, and the maintainer told what that means
    blocks = tmp_path / "blocks.geojson"
    ring = [[9.5, 54.2], [9.501, 54.2], [9.501, 54.201], [9.5, 54.2]]
    blocks.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"FLIK": "DESHLI0123456789"},
        "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    assert main(["parcels", "import", str(blocks), "--aoi", "blocks", "--year", "2024"]) == 0
    out = capsys.readouterr().out
    assert "1 of 1 parcels imported" in out and "columns: parcel id FLIK, crop code -, crop name -\n" in out
    assert "warning: no crop code column found: the parcels are extracted, but no aid scheme applies" in out
    mixed = write_mixed_geojson(tmp_path / "mixed.geojson")
    assert main(["parcels", "import", str(mixed), "--aoi", "mixed", "--year", "2024"]) == 0
    out = capsys.readouterr().out
    assert "3 of 8 parcels imported, 1 repaired, 5 rejected" in out
    assert "rejected feature 3 (line): not a polygon (LineString)" in out
    assert main(["parcels", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:8] == ["aoi", "year", "set", "parcels", "srid", "buffer_m", "version", "imported_at"]
    assert [line.split()[:2] + line.split()[3:7] for line in lines[1:]] == [
        ["blocks", "2024", "1", "4326", "0", "1"],
        ["dk", "2026", "100", "25832", "0", "1"],
        ["mixed", "2024", "3", "4326", "0", "1"],
    ]
    assert main(["parcels", "import", str(dk), "--aoi", "dk", "--year", "2026", "--id-column", "Marknr"]) == 2
    err = capsys.readouterr().err
    assert "dk_2026_shp.zip" in err and "occur more than once" in err and "'1-0'" in err
    with psycopg.connect(db_url) as check:
        assert [(s.aoi, s.version, s.n_parcels) for s in list_parcel_sets(check)] == [
            ("blocks", 1, 1), ("dk", 1, 100), ("mixed", 1, 3)]


def test_concurrent_imports_of_a_new_set_serialise(db_url: str) -> None:
    import threading

    path = shared_data("parcels", "nl_brp_2023.gpkg")
    results: dict[str, parcel.ImportReport] = {}
    with psycopg.connect(db_url) as first, psycopg.connect(db_url) as second:
        with first.transaction():
            results["first"] = import_parcels(first, path, aoi="nl", year=2023)

            def run_second() -> None:  # blocks on the uncommitted parcel_set row of the first
                results["second"] = import_parcels(second, path, aoi="nl", year=2023)

            worker = threading.Thread(target=run_second)
            worker.start()
            # really blocked on the first import's row (reading the file alone takes longer than a second)
            wait_until_waiting_on_a_lock(db_url, second.info.backend_pid)
            assert worker.is_alive() and "second" not in results
        worker.join(timeout=60)
        assert not worker.is_alive()
        assert results["second"].parcel_set_id == results["first"].parcel_set_id
        assert (results["first"].version, results["second"].version, results["second"].n_new) == (1, 2, 0)
        assert second.execute("SELECT count(*), count(DISTINCT parcel_key) FROM cbm.parcel").fetchone() == (100, 100)


def test_keys_of_removed_parcels_are_never_reused(conn: psycopg.Connection, tmp_path: Path) -> None:
    for version, ids in enumerate((["a", "b", "c"], ["a", "b"], ["a", "b", "d"]), start=1):
        register = write_gpkg(tmp_path / f"v{version}.gpkg", ids, crs="EPSG:32631")
        import_parcels(conn, register, aoi="keys", year=2024, crop_name_column="-")
    rows = conn.execute("SELECT parcel_id, parcel_key FROM cbm.parcel ORDER BY parcel_key").fetchall()
    assert rows == [("a", 1), ("b", 2), ("d", 4)]  # key 3 belonged to the removed parcel c
    assert conn.execute("SELECT max_parcel_key FROM cbm.parcel_set").fetchone() == (4,)
