"""The images behind a parcel's events in its audit report, on the demo's real Sentinel-2 images of Flanders.

The demo's 118 Sentinel-2 L2A images (shared/data/worldcereal_31UDS) are registered from its local
catalogue and extracted in-process for its 18 parcels; the markers and lights are computed as the
cbm_markers DAG does. The report of a mown grassland parcel then shows, for the mowing that decided its
light, the last image before the cut and the first after it: the parcel is greener before than after.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import psycopg
import pytest
from conftest import fresh_database, shared_data
from matplotlib.image import imread
from scipy import ndimage

from cbm_tasks import lineage
from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.local import LocalCatalogue
from cbm_tasks.catalogue.query import SearchQuery
from cbm_tasks.cli import main
from cbm_tasks.demo.data import DemoLayout, build_demo
from cbm_tasks.extraction.extract import extract_product
from cbm_tasks.ops import cluster
from cbm_tasks.parcels.sets import import_parcels
from cbm_tasks.pipeline.markers import run_parcel_set
from cbm_tasks.report.evidence import EventEvidence
from cbm_tasks.report.parcel_audit import gather
from cbm_tasks.report.render import render_html, write_parcel_report
from cbm_tasks.store import StoreConfig, open_store

STORE = open_store(StoreConfig())
RUN = lineage.RunContext(step="markers", dag_id="cbm_markers", run_id="manual__evidence", task_id="markers",
                         map_index=-1, try_number=1)
MOWN = "demo-0014"  # permanent grassland, green: cut in May (NDVI 0.87 -> 0.7) and early July


@pytest.fixture(scope="module")
def demo_layout(tmp_path_factory: pytest.TempPathFactory) -> DemoLayout:
    return build_demo(tmp_path_factory.mktemp("evidence"), cube_dir=shared_data("worldcereal_31UDS"))


@pytest.fixture(scope="module")
def demo_db_url(pg_cluster: cluster.ClusterConfig, template_db: str) -> Iterator[str]:
    """One database for the module: its tests only read it (extracting 118 images takes seconds)."""
    with fresh_database(pg_cluster, template_db) as url:
        yield url


@pytest.fixture(scope="module")
def demo_db(demo_db_url: str, demo_layout: DemoLayout) -> Iterator[psycopg.Connection]:
    """The demo's parcels with every Sentinel-2 image extracted, markers and lights computed."""
    with psycopg.connect(demo_db_url, autocommit=True) as conn:
        import_parcels(conn, demo_layout.parcels_file, aoi=demo_layout.aoi, year=demo_layout.year, strict=True)
        query = SearchQuery(collection="SENTINEL-2", product_type="S2MSI2A",
                            aoi_wkt="POLYGON((2.9 50.7, 3.2 50.7, 3.2 51.0, 2.9 51.0, 2.9 50.7))",
                            start=datetime(2017, 1, 1, tzinfo=UTC), end=datetime(2019, 1, 1, tzinfo=UTC))
        for product_id in registry.register(conn, LocalCatalogue(demo_layout.catalogue_root).search(query),
                                            aoi=demo_layout.aoi):
            extract_product(conn, STORE, product_id, aoi=demo_layout.aoi, year=demo_layout.year)
        run_parcel_set(conn, RUN, aoi=demo_layout.aoi, year=demo_layout.year, full=True)
        yield conn


def _picture(png: bytes) -> np.ndarray:
    rgba: np.ndarray = imread(io.BytesIO(png), format="png")
    return rgba


def _inside(rgba: np.ndarray) -> np.ndarray:
    """Pixels inside the yellow parcel outline (the outline itself left out)."""
    outline = (rgba[..., 0] > 0.99) & (rgba[..., 1] > 0.99) & (rgba[..., 2] < 0.01)
    filled: np.ndarray = ndimage.binary_fill_holes(outline) & ~outline
    return filled


def _greenness(rgba: np.ndarray) -> float:
    """Mean excess of green over red inside the parcel (grass: positive; cut grass, stubble, soil: less)."""
    inside = _inside(rgba)
    assert inside.sum() > 50, "the outline encloses the parcel"
    return float(np.mean(rgba[..., 1][inside] - rgba[..., 0][inside]))


def test_the_mowing_that_decided_the_light_shows_the_cut(demo_db: psycopg.Connection, demo_layout: DemoLayout,
                                                         tmp_path: Path) -> None:
    conn = demo_db
    audit = gather(conn, aoi=demo_layout.aoi, year=demo_layout.year, parcel_id=MOWN, store=STORE)
    deciding = {(light.event_marker, light.event_seq): light.scheme for light in audit.lights if light.event_seq}
    assert ("mowing", 2) in deciding or ("mowing", 1) in deciding
    first: EventEvidence = audit.evidence[0]
    # the deciding event first, named with the schemes it decides
    assert (first.marker, first.seq) in deciding and first.decides == (deciding[(first.marker, first.seq)],)
    assert len(audit.evidence) <= 4 and all(e.marker in ("mowing", "harvest", "bare_soil", "emergence")
                                            for e in audit.evidence)
    events = {(e.marker, e.seq): e for e in audit.events}
    for shown in audit.evidence:
        event = events[(shown.marker, shown.seq)]
        start, end = shown.images
        # the images are those the event's dates come from, with their acquisition days
        assert (start.role, start.product_id, end.role, end.product_id) == (
            "start", event.start_product, "end", event.end_product)
        assert (start.acquired, end.acquired) == (event.start, event.end)
        for image in shown.images:
            acquired = conn.execute("SELECT name, acquired_at FROM cbm.product WHERE product_id = %s",
                                    (image.product_id,)).fetchone()
            assert (image.product_name, image.acquired) == (acquired[0], acquired[1].date())
            assert image.bands == "B04 B03 B02" and image.problem == "" and image.png is not None
            rgba = _picture(image.png)
            assert rgba.shape[2] == 4 and 150 <= max(rgba.shape[:2]) <= 200  # enlarged to about 192 pixels
    # May's cut in the pictures: the parcel is greener in the last image before it than in the first after it
    may = next(e for e in audit.evidence if e.marker == "mowing" and e.main is not None and e.main.month == 5)
    before, after = (_greenness(_picture(image.png or b"")) for image in may.images)
    assert before > after + 0.05, (before, after)
    # in the report: each picture with its date, product and id; the PDF holds them too
    html = render_html(audit)
    assert '<table id="evidence">' in html
    for shown in audit.evidence:
        for image in shown.images:
            assert f'id="chip-{shown.marker}-{shown.seq}-{image.role}"' in html
            assert f"{image.role}: {image.acquired} {image.product_name} ({image.product_id})" in html
    files = write_parcel_report(audit, tmp_path / "report")
    assert files.pdf is not None and files.pdf.stat().st_size > 50_000


def test_a_red_mowing_light_shows_the_largest_fall_that_was_not_a_cut(demo_db: psycopg.Connection,
                                                                       demo_layout: DemoLayout) -> None:
    conn = demo_db
    row = conn.execute("SELECT p.parcel_id FROM cbm.traffic_light t JOIN cbm.parcel p USING (parcel_set_id, "
                       "parcel_key) WHERE t.scheme = 'grassland_mowing' AND t.colour = 'red' ORDER BY 1 LIMIT 1"
                       ).fetchone()
    assert row is not None, "the demo has grassland without a cut found in June-August"
    audit = gather(conn, aoi=demo_layout.aoi, year=demo_layout.year, parcel_id=row[0], store=STORE)
    shown = audit.evidence[0]
    assert (shown.marker, shown.seq, shown.decides) == ("mowing", 0, ("grassland_mowing",))
    assert shown.main is not None and date(2018, 6, 1) <= shown.main <= date(2018, 8, 31)
    # the largest fall of the window among the falls the marker judged, with the tests it failed
    in_window = [f for f in audit.mowing_falls if "2018-06-01" <= f.main_date <= "2018-08-31"]
    largest = max(in_window, key=lambda f: f.drop)
    assert largest.verdict != "mowing" and shown.main.isoformat() == largest.main_date
    assert f"drop {largest.drop:.2f}" in shown.note and largest.failed in shown.note
    # its pictures are the Sentinel-2 images of the fall's two days
    start, end = shown.images
    assert (start.acquired.isoformat() if start.acquired else "", end.acquired.isoformat() if end.acquired else "") == (
        largest.start_date, largest.end_date)
    assert start.png is not None and end.png is not None and start.bands == "B04 B03 B02"
    assert f"no mowing in grassland_mowing: the fall of {largest.main_date}" in render_html(audit)


def test_an_image_gone_from_the_store_is_named_and_the_report_still_made(
        demo_db: psycopg.Connection, demo_layout: DemoLayout, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    conn = demo_db
    audit = gather(conn, aoi=demo_layout.aoi, year=demo_layout.year, parcel_id=MOWN, store=STORE)
    gone = audit.evidence[0].images[1]
    location = conn.execute("SELECT location FROM cbm.product WHERE product_id = %s", (gone.product_id,)).fetchone()
    band = Path(location[0]) / "B03.tif"
    band.rename(band.with_suffix(".moved"))
    try:
        with caplog.at_level(logging.WARNING, logger="cbm_tasks.report.evidence"):
            again = gather(conn, aoi=demo_layout.aoi, year=demo_layout.year, parcel_id=MOWN, store=STORE)
    finally:
        band.with_suffix(".moved").rename(band)
    shown = again.evidence[0]
    assert [image.png for image in shown.images] == [None, None]  # one stretch for both: neither is drawn
    assert all(str(band) in image.problem for image in shown.images)
    assert str(band) in caplog.text
    # the other events keep their pictures, and the report is written, saying why a picture is missing
    assert all(image.png is not None for e in again.evidence[1:] for image in e.images)
    html = write_parcel_report(again, tmp_path / "report", pdf=False).html.read_text()
    assert "not shown: " in html and str(band) in html


def test_without_a_store_or_with_no_images_the_report_has_no_pictures(
        demo_db: psycopg.Connection, demo_layout: DemoLayout, demo_db_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    audit = gather(demo_db, aoi=demo_layout.aoi, year=demo_layout.year, parcel_id=MOWN)
    assert audit.evidence == [] and '<table id="evidence">' not in render_html(audit)
    # the command line takes the store from the CBM_STORE_* variables (unset: local files, as here)
    monkeypatch.setenv("CBM_DATABASE_URL", demo_db_url)
    for flags, pictured in (([], True), (["--no-images"], False)):
        out = tmp_path / ("with" if pictured else "without")
        assert main(["audit", "parcel", "--aoi", demo_layout.aoi, "--year", str(demo_layout.year), "--parcel", MOWN,
                     "--out", str(out), "--no-pdf", *flags]) == 0
        capsys.readouterr()
        html = (out / f"{demo_layout.aoi}_{demo_layout.year}_{MOWN}.html").read_text()
        assert ('<table id="evidence">' in html) is pictured
