"""Registers delivered zipped the way agencies publish them: in a folder, as GeoParquet, beside metadata."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import psycopg
import pytest
from conftest import shared_data
from test_parcel_import import write_geoparquet

from cbm_tasks.errors import ParcelImportError
from cbm_tasks.parcels.sets import import_parcels

DK = "dk_2026_shp.zip"  # a shapefile at the archive's root


def _refolded(source: Path, target: Path, folder: str, extra: dict[str, bytes] | None = None) -> Path:
    """*source*'s members moved into *folder* inside a new archive *target*, plus *extra* members."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            new.writestr(f"{folder}/{name}", old.read(name))
        for name, data in (extra or {}).items():
            new.writestr(name, data)
    return target


def test_a_shapefile_in_a_folder_of_the_archive_is_found(conn: psycopg.Connection, tmp_path: Path) -> None:
    root = import_parcels(conn, shared_data("parcels", DK), aoi="dk_root", year=2026)
    # LV, RO and SK publish their registers so; the metadata beside it is not a second register
    nested = _refolded(shared_data("parcels", DK), tmp_path / "dk_nested.zip", "Marker_2026",
                       {"Marker_2026/metadata.json": b'{"title": "Marker"}', "__MACOSX/._x.shp": b"",
                        "LICENSE.txt": b"CC0"})
    report = import_parcels(conn, nested, aoi="dk_nested", year=2026)
    assert (report.n_imported, report.srid) == (root.n_imported, root.srid) == (100, 25832)
    same = conn.execute(
        "SELECT count(*) FROM cbm.parcel a JOIN cbm.parcel b USING (parcel_id) WHERE a.parcel_set_id = %s "
        "AND b.parcel_set_id = %s AND ST_Equals(a.geom, b.geom) AND a.crop_code = b.crop_code",
        (root.parcel_set_id, report.parcel_set_id)).fetchone()
    assert same == (100,)
    source = conn.execute("SELECT source_file FROM cbm.parcel_set WHERE parcel_set_id = %s",
                          (report.parcel_set_id,)).fetchone()
    assert source is not None and source[0].startswith(f"{nested}/Marker_2026/") and source[0].endswith(".shp")


def test_a_zipped_geoparquet_is_read_and_its_copy_removed(conn: psycopg.Connection, tmp_path: Path) -> None:
    archive = tmp_path / "lt.zip"
    with zipfile.ZipFile(archive, "w") as new:  # Lithuania's GSA is a zipped GeoParquet file
        new.write(write_geoparquet(tmp_path / "nl.parquet"), "GSA-2023.geoparquet")
    scratch_before = set(Path(tempfile.gettempdir()).glob("cbm-register-*"))
    report = import_parcels(conn, archive, aoi="nl_zipped_parquet", year=2023)
    assert (report.n_imported, report.srid) == (100, 28992)
    assert set(Path(tempfile.gettempdir()).glob("cbm-register-*")) == scratch_before


def test_an_archive_of_several_registers_names_them(conn: psycopg.Connection, tmp_path: Path) -> None:
    two = _refolded(shared_data("parcels", DK), tmp_path / "two.zip", "2026",
                    {"2025/parcels.gpkg": shared_data("parcels", "nl_brp_2023.gpkg").read_bytes()})
    with pytest.raises(ParcelImportError, match=r"two\.zip: several vector datasets in the archive "
                                                r"\(2026/\w+\.shp, 2025/parcels\.gpkg\); unpack it"):
        import_parcels(conn, two, aoi="two", year=2026)
    # shapefiles of one folder are one dataset of several layers, as at the archive's root
    layers = tmp_path / "layers.zip"
    with zipfile.ZipFile(shared_data("parcels", DK)) as old, zipfile.ZipFile(layers, "w") as new:
        for name in old.namelist():
            for copy in ("a", "b"):
                new.writestr(f"Marker/{copy}{Path(name).suffix}", old.read(name))
    with pytest.raises(ParcelImportError, match=r"layers\.zip/Marker: several layers \(a, b\); choose one with"):
        import_parcels(conn, layers, aoi="layers", year=2026)
    assert import_parcels(conn, layers, aoi="layers", year=2026, layer="b").n_imported == 100
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ParcelImportError, match=r"broken\.zip: not a readable zip archive"):
        import_parcels(conn, broken, aoi="broken", year=2026)
