"""The demo built from another WorldCereal chip's cube: files found by name, its tile, year and dates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import xarray as xr
from conftest import shared_data

from cbm_tasks.cli import main
from cbm_tasks.demo.cube import CUBE_FILES, crop_name, find_cube
from cbm_tasks.demo.data import build_demo, demo_folder
from cbm_tasks.errors import CorruptProductError

CHIP = "2021_TZA_TEST_CHIP"
ATTRS = {"location_id": CHIP, "tile": "37MBS", "start_date": "2019-09-23", "end_date": "2021-09-22"}


def _rewrite(name: str, out: Path, new_name: str, *, crop: int | None = None) -> None:
    """The shared chip's file *name* as another chip's: its attributes, three dates, another crop code."""
    with xr.open_dataset(shared_data("worldcereal_31UDS", CUBE_FILES[name]), engine="netcdf4",
                         mask_and_scale=False) as dataset:
        part = dataset.isel(timestamp=slice(0, 3)) if "timestamp" in dataset.dims else dataset.copy()
        part = part.load()
    part.attrs |= ATTRS
    for variable in part.variables.values():  # xarray's CF encoder takes an array 'bounds' for a variable name
        variable.attrs.pop("bounds", None)
    if crop is not None:  # the maize (1200) of the shared chip becomes winter wheat
        part["CT"] = part["CT"].where(part["CT"] != 1200, crop)
    part.to_netcdf(out / new_name, engine="netcdf4")


@pytest.fixture(scope="module")
def other_cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # a chip as WorldCereal publishes some: no 10 m Sentinel-2 file, Sentinel-1 of the descending pass
    folder = tmp_path_factory.mktemp("cubes") / CHIP
    folder.mkdir()
    tail = f"{CHIP}_32631_2019-09-23_2021-09-22.nc"
    _rewrite("POLY", folder, f"OUTPUT_POLY-110_10m_{tail}", crop=1110)
    _rewrite("S2_20m", folder, f"S2_L2A_20m_{tail}")
    _rewrite("S1_GRD_ASC", folder, f"S1_GRD-DESCENDING_20m_{tail}")
    return folder


def test_another_chip_builds_with_its_tile_year_and_dates(other_cube: Path, tmp_path: Path) -> None:
    layout = build_demo(demo_folder(tmp_path, other_cube), cube_dir=other_cube)
    assert layout.catalogue_root == tmp_path / f"demo-{CHIP}" / "catalogue"
    assert (layout.year, layout.window, layout.n_s2, layout.n_s1) == (2021, ("2019-09-23", "2021-09-22"), 3, 3)
    s2 = sorted((layout.catalogue_root / "sentinel-2-l2a").iterdir())
    assert len(s2) == 3 and all(item.name.startswith("S2_37MBS_") for item in s2)
    item = json.loads((s2[0] / f"{s2[0].name}.json").read_text())
    assert item["properties"]["grid:code"] == "MGRS-37MBS" and CHIP in item["properties"]["cbm:source"]["dataset"]
    assert sorted(item["assets"]) == ["B05", "B06", "B07", "B11", "B12", "B8A", "SCL"]  # the chip has no 10 m file
    s1 = sorted((layout.catalogue_root / "sentinel-1-card-bs").iterdir())
    s1_item = json.loads((s1[0] / f"{s1[0].name}.json").read_text())
    assert s1[0].name.startswith("S1_CARD-BS_37MBS_") and s1_item["properties"]["sat:orbit_state"] == "descending"
    assert layout.parcels_file.name == "demo_parcels_2021.gpkg"
    _, table = pyogrio.read_arrow(layout.parcels_file, columns=["crop_code", "crop_name"], read_geometry=False)
    names = {name for code, name in zip(table["crop_code"].to_pylist(), table["crop_name"].to_pylist(), strict=True)
             if code == 1110}
    assert names == {"Winter wheat"}


def test_cli_builds_the_cube_it_is_given(other_cube: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "build", "--out", str(tmp_path), "--cube-dir", str(other_cube), "--max-products", "1"]) == 0
    printed = capsys.readouterr().out
    assert "aoi demo (year 2021)" in printed and "(1 S2 L2A, 1 S1 CARD-BS products)" in printed
    assert f"cbm parcels import {tmp_path / f'demo-{CHIP}' / 'parcels' / 'demo_parcels_2021.gpkg'}" in printed


def test_a_folder_without_a_cube_is_named(other_cube: Path, tmp_path: Path) -> None:
    with pytest.raises(CorruptProductError, match=r"no parcel raster OUTPUT_\*\.nc"):
        find_cube(tmp_path)
    twice = tmp_path / "twice"
    shutil.copytree(other_cube, twice)
    (twice / "S2_L2A_20m_copy.nc").write_bytes(b"")
    with pytest.raises(CorruptProductError, match=r"2 files S2_L2A_20m_\*\.nc .*; one cube per folder"):
        find_cube(twice)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(next(other_cube.glob("OUTPUT_*.nc")), alone)
    with pytest.raises(CorruptProductError, match="no sensor file"):
        find_cube(alone)


def test_crop_names_of_the_legend_groups() -> None:
    assert [crop_name(code) for code in (9120, 1110, 1199, 4351, 3510, 42)] == [
        "Permanent grass crops", "Winter wheat", "Wheat", "Rapeseed", "Fruit and nuts", ""]
    assert np.all([crop_name(c) for c in (1200, 2130, 5100, 7900)])
