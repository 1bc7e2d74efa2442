"""cbm_tasks.extraction.bands: band descriptors, a real S2 L2A SAFE, single and multi-band GeoTIFFs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from conftest import shared_data
from test_extract_support import write_tif

from cbm_tasks.catalogue.product import Product
from cbm_tasks.errors import BandError, CorruptProductError
from cbm_tasks.extraction import bands, raster_io, s2_safe, sources
from cbm_tasks.store import StoreConfig, open_store

SAFE = "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE"
STORE = open_store(StoreConfig())
TRANSFORM = Affine(10, 0, 501360, 0, -10, 5629680)


def _product(location: str, attributes: dict[str, object] | None = None) -> Product:
    return Product(uid="x", name="x", catalogue="file", collection="SENTINEL-2", product_type="S2MSI2A",
                   acquired_at=datetime(2022, 10, 5, tzinfo=UTC), location=location, attributes=attributes or {})


def test_safe_bands_at_best_resolution_with_boa_offset() -> None:
    safe = shared_data("s2_l2a_safe", SAFE)
    found = {b.name: b for b in sources.product_bands(_product(str(safe)), store=STORE)}
    # the sample holds the 60 m bands and the 20 m SCL; B08 exists at 10 m only, absent here
    assert list(found) == ["B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12", "SCL"]
    b04 = found["B04"]
    assert b04.resolution_m == 60 and b04.href.endswith("R60m/T29UNU_20221005T115411_B04_60m.jp2")
    assert (b04.nodata, b04.scale, b04.offset, b04.categorical) == (0.0, 1e-4, -0.1, False)
    assert 2000 * b04.scale + b04.offset == pytest.approx((2000 - 1000) / 10000)
    scl = found["SCL"]
    assert scl.resolution_m == 20 and scl.href.endswith("R20m/T29UNU_20221005T115411_SCL_20m.jp2")
    assert (scl.categorical, scl.n_classes, scl.nodata, scl.scale, scl.offset) == (True, 12, 0.0, 1.0, 0.0)


def test_safe_metadata() -> None:
    meta = s2_safe.read_safe_metadata(shared_data("s2_l2a_safe", SAFE))
    assert meta.acquired_at == datetime(2022, 10, 5, 11, 54, 11, 24000, tzinfo=UTC)
    assert (meta.processing_baseline, meta.quantification, meta.platform, meta.relative_orbit) == (
        "04.00", 10000.0, "S2A", 23)
    assert meta.boa_offsets["B8A"] == -1000 and meta.product_uri == SAFE.removesuffix(".SAFE")
    assert meta.footprint_wkt is not None and meta.footprint_wkt.startswith("POLYGON((-7.76")


def test_safe_before_baseline_4_has_no_offset(tmp_path: Path) -> None:
    safe = tmp_path / "S2B_MSIL2A_20180405T105031_N0206_R051_T31UDS_20180405T142238.SAFE"
    img = safe / "GRANULE" / "L2A_T31UDS" / "IMG_DATA"
    for res, name in (("R10m", "B04_10m"), ("R20m", "B04_20m"), ("R20m", "B05_20m"), ("R60m", "B05_60m")):
        (img / res).mkdir(parents=True, exist_ok=True)
        (img / res / f"T31UDS_20180405T105031_{name}.jp2").write_bytes(b"")
    mtd = shared_data("s2_l2a_safe", SAFE, "MTD_MSIL2A.xml").read_text()
    start = mtd.index("<BOA_ADD_OFFSET_VALUES_LIST>")
    end = mtd.index("</BOA_ADD_OFFSET_VALUES_LIST>") + len("</BOA_ADD_OFFSET_VALUES_LIST>")
    (safe / "MTD_MSIL2A.xml").write_text(mtd[:start] + mtd[end:])
    found = s2_safe.safe_bands(safe)
    assert [(b.name, b.resolution_m, b.offset) for b in found] == [("B04", 10.0, 0.0), ("B05", 20.0, 0.0)]


def test_descriptors_are_used_as_given() -> None:
    descriptors = [
        {"name": "VV", "href": "s3://bucket/coh.tif", "band": 1, "nodata": None, "scale": 1.0, "offset": 0.0,
         "resolution_m": 20, "categorical": False, "n_classes": None},
        {"name": "SCL", "href": "/data/scl.tif", "band": 1, "nodata": 0, "scale": None, "offset": None,
         "resolution_m": 20, "categorical": True, "n_classes": 12},
    ]
    found = sources.product_bands(_product("/data", {"bands": descriptors}), store=STORE)
    assert found[0] == bands.BandSource("VV", "s3://bucket/coh.tif", 1, None, 1.0, 0.0, 20.0, False, None)
    assert found[1] == bands.BandSource("SCL", "/data/scl.tif", 1, 0.0, 1.0, 0.0, 20.0, True, 12)


@pytest.mark.parametrize(
    ("descriptor", "match"),
    [({"href": "/a.tif"}, "descriptor 0 needs 'name' and 'href'"),
     ({"name": "B04", "href": "/a.tif", "band": "one"}, "descriptor 'B04' is malformed"),
     ({"name": "B04", "href": "/a.tif", "scale": 0}, "scale must be finite and non-zero"),
     ({"name": "SCL", "href": "/a.tif", "categorical": True}, "categorical band needs n_classes")],
)
def test_bad_descriptor_is_named(descriptor: dict[str, object], match: str) -> None:
    with pytest.raises(BandError, match=match):
        bands.bands_from_descriptors([descriptor], product="S2X")


def test_nan_nodata_means_none_and_stays_valid_json() -> None:
    # STAC writers give float nodata as the string "nan"; NaN is not valid JSON in cbm.extraction.params
    (band,) = bands.bands_from_descriptors([{"name": "VV", "href": "/vv.tif", "nodata": "nan"}], product="S1X")
    assert band.nodata is None
    params = band.params()
    assert params["nodata"] is None
    assert json.loads(json.dumps(params, allow_nan=False)) == params  # valid JSON, and nothing lost on the way


def test_duplicate_band_names_are_refused() -> None:
    with pytest.raises(BandError, match="S2X: band names must be unique, B04 repeated"):
        bands.bands_from_descriptors([{"name": "B04", "href": "/a"}, {"name": "B04", "href": "/b"}], product="S2X")


def test_multiband_geotiff_names_nodata_scale_offset(tmp_path: Path) -> None:
    tif = write_tif(tmp_path / "coh.tif", np.ones((2, 4, 4), np.float32), transform=TRANSFORM, nodata=-9999,
                    descriptions=["VV", "VH"], scales=[0.5, 0.5], offsets=[1.0, 2.0])
    found = sources.product_bands(_product(str(tif)), store=STORE)
    assert [(b.name, b.band_index, b.nodata, b.scale, b.offset, b.resolution_m) for b in found] == [
        ("VV", 1, -9999.0, 0.5, 1.0, 10.0), ("VH", 2, -9999.0, 0.5, 2.0, 10.0)]


def test_geotiff_without_descriptions_and_scl(tmp_path: Path) -> None:
    plain = write_tif(tmp_path / "plain.tif", np.ones((2, 4, 4), np.uint16), transform=TRANSFORM)
    assert [(b.name, b.nodata, b.scale) for b in bands.raster_file_bands(str(plain), store=STORE)] == [
        ("b1", None, 1.0), ("b2", None, 1.0)]
    scl = write_tif(tmp_path / "scl.tif", np.ones((4, 4), np.uint8), transform=TRANSFORM, nodata=0,
                    descriptions=["SCL"])
    (band,) = bands.raster_file_bands(str(scl), store=STORE)
    assert (band.categorical, band.n_classes) == (True, 12)


def test_a_one_band_file_without_description_is_the_band_its_name_names(tmp_path: Path) -> None:
    # a product's bands as one file each (CDSE, Earth Search, JRC's chips): the markers need B04 and B08 by name
    named = {"T33UWP_20240601T100031_B04_10m.tif": "B04", "B8A.tif": "B8A", "nir.tif": "B08",
             "S2A_MSIL2A_20240601.B11.tif": "B11", "S1A_IW_GRDH_20240601_VH.tif": "VH", "coh_VV_VH.tif": "b1",
             "image_2024.tif": "b1"}
    for file_name, band in named.items():
        tif = write_tif(tmp_path / file_name, np.ones((4, 4), np.uint16), transform=TRANSFORM)
        assert [b.name for b in bands.raster_file_bands(str(tif), store=STORE)] == [band], file_name
    scl = write_tif(tmp_path / "T33UWP_20240601T100031_SCL_20m.tif", np.ones((4, 4), np.uint8), transform=TRANSFORM)
    (band,) = bands.raster_file_bands(str(scl), store=STORE)
    assert (band.name, band.categorical, band.n_classes) == ("SCL", True, 12)
    # a description wins, and a file of several bands is not named by its file
    described = write_tif(tmp_path / "B04.tif", np.ones((4, 4), np.uint16), transform=TRANSFORM, descriptions=["red"])
    assert [b.name for b in bands.raster_file_bands(str(described), store=STORE)] == ["red"]
    two = write_tif(tmp_path / "B08_pair.tif", np.ones((2, 4, 4), np.uint16), transform=TRANSFORM)
    assert [b.name for b in bands.raster_file_bands(str(two), store=STORE)] == ["b1", "b2"]


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(BandError, match="missing.tif does not exist"):
        bands.raster_file_bands(str(tmp_path / "missing.tif"), store=STORE)
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(CorruptProductError, match="junk.tif"):
        bands.raster_file_bands(str(tmp_path / "junk.tif"), store=STORE)


def test_acquisition_time_from_tags_or_name(tmp_path: Path) -> None:
    array = np.ones((4, 4), np.uint16)
    tagged = write_tif(tmp_path / "a.tif", array, transform=TRANSFORM, tags={"TIFFTAG_DATETIME": "2018:04:05 10:50:31"})
    assert raster_io.raster_acquired_at(str(tagged), store=STORE) == datetime(2018, 4, 5, 10, 50, 31, tzinfo=UTC)
    acq = write_tif(tmp_path / "b.tif", array, transform=TRANSFORM, tags={"ACQUISITION_DATE": "2018-06-01"})
    assert raster_io.raster_acquired_at(str(acq), store=STORE) == datetime(2018, 6, 1, tzinfo=UTC)
    named = write_tif(tmp_path / "S2B_MSIL2A_20180405T105031_B04.tif", array, transform=TRANSFORM)
    assert raster_io.raster_acquired_at(str(named), store=STORE) == datetime(2018, 4, 5, 10, 50, 31, tzinfo=UTC)
    dated = write_tif(tmp_path / "coh_2018-07-09.tif", array, transform=TRANSFORM)
    assert raster_io.raster_acquired_at(str(dated), store=STORE) == datetime(2018, 7, 9, tzinfo=UTC)
    bare = write_tif(tmp_path / "image.tif", array, transform=TRANSFORM)
    assert raster_io.raster_acquired_at(str(bare), store=STORE) is None


def test_relative_band_path_is_relative_to_the_store_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "root" / "S2").mkdir(parents=True)
    write_tif(tmp_path / "root" / "S2" / "B04.tif", np.ones((4, 4), np.uint16), transform=TRANSFORM,
              descriptions=["B04"])
    rooted = open_store(StoreConfig(root=str(tmp_path / "root")))
    assert rooted.exists("S2/B04.tif")
    monkeypatch.chdir(tmp_path)  # the working directory holds no S2/B04.tif: only the store root does
    (band,) = bands.raster_file_bands("S2/B04.tif", store=rooted)
    assert (band.name, band.href) == ("B04", "S2/B04.tif")
    found = sources.product_bands(_product("S2/B04.tif"), store=rooted)
    assert [b.name for b in found] == ["B04"]
    with pytest.raises(BandError, match="file S2/B05.tif does not exist"):
        bands.raster_file_bands("S2/B05.tif", store=rooted)
