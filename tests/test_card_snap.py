"""The SNAP graphs (valid, every parameter supplied, documented node chains) and the gpt process boundary.

ESA SNAP cannot be installed here: a test executable stands in for ``gpt``. It records its
arguments and environment, and behaves as ``CBM_FAKE_GPT`` says: ``ok`` (writes a GeoTIFF or
BEAM-DIMAP stand-in at ``-Poutput``), ``fail`` (exit 1 with a Java stack trace), ``hang``,
``nothing`` (exit 0, no output) or ``partial`` (exit 0, truncated GeoTIFF).
"""

from __future__ import annotations

import json
import sys
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
import rasterio
import shapely
from card_data import ROME_GRD, metadata_only_safe, rome_product

from cbm_tasks import lineage
from cbm_tasks.card.backend import BackendConfig
from cbm_tasks.card.choose import open_backend
from cbm_tasks.card.errors import IncompleteSafeError, SnapNotInstalledError
from cbm_tasks.card.gpt import GptSettings, gpt_command, read_graph, run_gpt
from cbm_tasks.card.jobs import CardJob, card_bs_jobs, coherence_jobs
from cbm_tasks.card.snap import GRAPH_DIR, SnapBackend, swath_footprints
from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.product import Product
from cbm_tasks.errors import ConfigError, SnapError
from cbm_tasks.pipeline.card import claim_jobs, plan_aoi, process
from cbm_tasks.store import LocalStore, StoreConfig

ROME_SLC = "S1A_IW_SLC__1SDV_20220104T170557_20220104T170624_041314_04E951_F1F1"
LATER_SLC = "S1A_IW_SLC__1SDV_20220116T170557_20220116T170624_041489_04EF23_A1B2"
AREA = shapely.box(12.49, 41.99, 12.51, 42.01).wkt

CHAINS = {
    "card_bs": ["Read", "Apply-Orbit-File", "ThermalNoiseRemoval", "Remove-GRD-Border-Noise", "Calibration",
                "Subset", "Terrain-Flattening", "Terrain-Correction", "Write"],
    "card_coh_swath": ["Read", "TOPSAR-Split", "Apply-Orbit-File", "Read", "TOPSAR-Split", "Apply-Orbit-File",
                       "Back-Geocoding", "Coherence", "TOPSAR-Deburst", "Write"],
    "card_coh_swath_assembled": ["Read", "TOPSAR-Split", "Apply-Orbit-File", "Read", "Read", "SliceAssembly",
                                 "TOPSAR-Split", "Apply-Orbit-File", "Back-Geocoding", "Coherence", "TOPSAR-Deburst",
                                 "Write"],
    "card_coh_merge": ["Read", "Read", "Read", "TOPSAR-Merge", "Terrain-Correction", "Write"],
    "card_coh_merge2": ["Read", "Read", "TOPSAR-Merge", "Terrain-Correction", "Write"],
    "card_coh_tc": ["Read", "Terrain-Correction", "Write"],
}

FAKE_GPT = '''#!{python}
"""Stand-in for ESA SNAP gpt (tests only)."""
import json, os, sys, time
args = sys.argv[1:]
with open(os.environ["CBM_FAKE_GPT_LOG"], "a") as log:
    log.write(json.dumps({{"args": args, "java": os.environ.get("_JAVA_OPTIONS")}}) + "\\n")
mode = os.environ.get("CBM_FAKE_GPT", "ok")
params = dict(a[2:].split("=", 1) for a in args if a.startswith("-P"))
print("Executing processing graph", args[0], flush=True)
if mode == "fail":
    print("SEVERE: org.esa.snap.core.gpf.OperatorException: Unable to find orbit file", file=sys.stderr)
    sys.exit(1)
if mode == "hang":
    time.sleep(60)
if mode == "nothing":
    sys.exit(0)
out = params["output"]
if out.endswith(".dim"):
    open(out, "w").write("<Dimap_Document/>")
    sys.exit(0)
import numpy as np, rasterio
from affine import Affine
n = len(params.get("polarisations", "VV,VH").split(","))
profile = dict(driver="GTiff", width=200, height=150, count=n, dtype="float32", crs="EPSG:32633",
               transform=Affine(10.0, 0, 291000.0, 0, -10.0, 4654000.0), nodata=0.0)
with rasterio.open(out, "w", **profile) as dst:
    for band in range(1, n + 1):
        dst.write(np.full((150, 200), 0.1 * band, "float32"), band)
if mode == "partial":
    data = open(out, "rb").read()
    open(out, "wb").write(data[: len(data) // 3])
print("done.", flush=True)
'''


@pytest.fixture
def gpt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "bin" / "gpt"
    path.parent.mkdir()
    path.write_text(FAKE_GPT.format(python=sys.executable))
    path.chmod(0o755)
    monkeypatch.setenv("CBM_FAKE_GPT_LOG", str(tmp_path / "gpt.log"))
    monkeypatch.setenv("CBM_FAKE_GPT", "ok")
    return path


def calls(tmp_path: Path) -> list[dict[str, object]]:
    log = tmp_path / "gpt.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def snap(gpt: Path, **settings: object) -> SnapBackend:
    backend = open_backend(BackendConfig(backend="snap", gpt_path=str(gpt), **settings))  # type: ignore[arg-type]
    assert isinstance(backend, SnapBackend)
    return backend


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_each_graph_is_a_valid_snap_graph_with_its_documented_chain(name: str) -> None:
    graph = read_graph(GRAPH_DIR / f"{name}.xml")
    assert graph.chain() == CHAINS[name]
    assert graph.nodes[-1].operator == "Write" and "output" in graph.parameters
    if name.startswith("card_coh_swath"):
        assert {"cohWinRg", "cohWinAz", "subswath"} <= graph.parameters
    if "Terrain-Correction" in CHAINS[name]:
        assert {"pixelSpacing", "mapProjection"} <= graph.parameters


def test_card_bs_calibrates_to_beta0_then_flattens_in_linear_units() -> None:
    graph = read_graph(GRAPH_DIR / "card_bs.xml")
    root = ET.parse(graph.path).getroot()
    calibration = next(n for n in root.iter("node") if n.get("id") == "Calibration")
    assert calibration.findtext("parameters/outputBetaBand") == "true"
    assert calibration.findtext("parameters/outputImageScaleInDb") == "false"
    assert graph.parameters == {"input", "output", "polarisations", "geoRegion", "pixelSpacing", "mapProjection",
                                "demName", "externalDEMFile", "externalDEMApplyEGM", "orbitType"}


def test_broken_graphs_are_named(tmp_path: Path) -> None:
    cases = {
        "not_xml": "<graph id='x'><version>1.0",
        "no_operator": "<graph id='x'><version>1.0</version><node id='Read'><sources/></node></graph>",
        "unknown_source": "<graph id='x'><version>1.0</version><node id='W'><operator>Write</operator>"
                          "<sources><sourceProduct refid='Nope'/></sources></node></graph>",
        "cycle": "<graph id='x'><version>1.0</version>"
                 "<node id='A'><operator>Op</operator><sources><sourceProduct refid='B'/></sources></node>"
                 "<node id='B'><operator>Op</operator><sources><sourceProduct refid='A'/></sources></node></graph>",
    }
    messages = {"not_xml": "cannot read", "no_operator": "needs an id and an <operator>",
                "unknown_source": r"reads unknown nodes \['Nope'\]", "cycle": "cycle through"}
    for name, text in cases.items():
        (tmp_path / f"{name}.xml").write_text(text)
        with pytest.raises(ConfigError, match=messages[name]):
            read_graph(tmp_path / f"{name}.xml")


def test_command_line_takes_every_parameter_once(gpt: Path) -> None:
    graph = read_graph(GRAPH_DIR / "card_coh_tc.xml")
    values = {name: f"v-{name}" for name in graph.parameters}
    command = gpt_command(GptSettings(gpt_path=str(gpt), threads=3, tile_cache_mb=2048), graph, values)
    assert command[:6] == [str(gpt), str(graph.path), "-q", "3", "-c", "2048M"]
    assert sorted(command[6:]) == sorted(f"-P{k}={v}" for k, v in values.items())
    with pytest.raises(ConfigError, match=r"missing \['output'\]"):
        gpt_command(GptSettings(), graph, {k: v for k, v in values.items() if k != "output"})
    with pytest.raises(ConfigError, match=r"not in the graph \['typo'\]"):
        gpt_command(GptSettings(), graph, {**values, "typo": "1"})


def test_card_bs_through_gpt_makes_a_described_cog(gpt: Path, tmp_path: Path) -> None:
    safe = metadata_only_safe(tmp_path, ROME_GRD)
    product = rome_product(safe)
    (job,) = _bs_jobs(product)
    output = snap(gpt, gpt_memory="12G").make(job, [(product, safe)], tmp_path)
    (call,) = calls(tmp_path)
    args = call["args"]
    assert isinstance(args, list) and args[0].endswith("snap/card_bs.xml")
    assert call["java"] == "-Xmx12G"
    assert f"-Pinput={safe}/manifest.safe" in args and "-PpixelSpacing=10.0" in args
    assert "-PmapProjection=AUTO:42001" in args and "-Ppolarisations=VV,VH" in args
    region = shapely.from_wkt(next(a for a in args if a.startswith("-PgeoRegion="))[len("-PgeoRegion="):])
    assert region.contains(shapely.from_wkt(AREA))
    with rasterio.open(output.path) as cog:
        assert cog.descriptions == ("VV", "VH") and cog.tags()["BACKEND"] == "ESA SNAP gpt"
        assert cog.read(2)[0, 0] == pytest.approx(0.2)
    assert [run["graph"] for run in output.lineage["runs"]] == ["card_bs"]


def _bs_jobs(product: Product) -> list[CardJob]:
    return card_bs_jobs([product], {"rome": AREA})


def test_coherence_runs_each_swath_then_merges(gpt: Path, tmp_path: Path) -> None:
    reference = metadata_only_safe(tmp_path, ROME_SLC)
    later = metadata_only_safe(tmp_path, ROME_SLC, name=LATER_SLC)
    products = [_slc(reference, "2022-01-04T17:05:57+00:00"), _slc(later, "2022-01-16T17:05:57+00:00")]
    area = shapely.from_wkt(products[0].footprint_wkt or "").centroid.buffer(0.05).wkt
    (job,) = coherence_jobs(products, {"rome": area})
    assert job.card_type == "CARD-COH12"
    output = snap(gpt, coherence_window=(10, 3)).make(job, [(products[0], reference), (products[1], later)],
                                                       tmp_path)
    graphs = [Path(str(call["args"][0])).stem for call in calls(tmp_path)]  # type: ignore[index]
    # the shared SLC's three sub-swath annotations all cover the area (copies of IW1's)
    assert graphs == ["card_coh_swath"] * 3 + ["card_coh_merge"]
    first = calls(tmp_path)[0]["args"]
    assert isinstance(first, list) and "-PcohWinRg=10" in first and "-PcohWinAz=3" in first
    assert "-Psubswath=IW1" in first and f"-Pinput2={later}/manifest.safe" in first
    merge = calls(tmp_path)[-1]["args"]
    assert isinstance(merge, list) and "-PpixelSpacing=20.0" in merge
    with rasterio.open(output.path) as cog:
        assert cog.tags()["CARD_TYPE"] == "CARD-COH12" and cog.tags()["SOURCE_PRODUCTS"] == f"{ROME_SLC},{LATER_SLC}"


def _slc(safe: Path, when: str) -> Product:
    footprint = swath_footprints(safe)["IW1"]  # the shared SLC annotates IW1 only
    return Product(uid=safe.name, name=safe.name[:-5], catalogue="test", collection="SENTINEL-1",
                   product_type="IW_SLC__1S", acquired_at=datetime.fromisoformat(when), location=str(safe),
                   platform="S1A", relative_orbit=117, orbit_direction="ASCENDING", footprint_wkt=footprint)


@pytest.mark.parametrize(("mode", "message"), [
    ("fail", r"(?s)gpt exited with 1 on graph card_bs.xml, product S1B_IW_GRDH.*Unable to find orbit file"),
    ("nothing", "gpt exited 0 but wrote no card_bs.tif"),
    ("partial", "unreadable"),
])
def test_gpt_failures_raise_snap_error(gpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str,
                                       message: str) -> None:
    monkeypatch.setenv("CBM_FAKE_GPT", mode)
    safe = metadata_only_safe(tmp_path, ROME_GRD)
    product = rome_product(safe)
    with pytest.raises(SnapError, match=message):
        snap(gpt).make(_bs_jobs(product)[0], [(product, safe)], tmp_path)


def test_gpt_timeout_kills_it(gpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBM_FAKE_GPT", "hang")
    graph = read_graph(GRAPH_DIR / "card_coh_tc.xml")
    started = time.perf_counter()
    with pytest.raises(SnapError, match=r"(?s)gpt timed out after 2 s on graph card_coh_tc.xml, product P1.*Executing"):
        run_gpt(GptSettings(gpt_path=str(gpt), timeout_s=2), graph, dict.fromkeys(graph.parameters, "x"), product="P1")
    assert time.perf_counter() - started < 20


def test_missing_gpt_and_incomplete_safe(tmp_path: Path) -> None:
    graph = read_graph(GRAPH_DIR / "card_coh_tc.xml")
    with pytest.raises(SnapNotInstalledError, match="gpt not found at '/opt/snap/bin/gpt'.*snap-worker"):
        run_gpt(GptSettings(gpt_path="/opt/snap/bin/gpt"), graph, dict.fromkeys(graph.parameters, "x"), product="P")
    broken = metadata_only_safe(tmp_path, ROME_GRD)
    next(broken.glob("measurement/*-vh-*.tiff")).unlink()
    product = rome_product(broken)
    with pytest.raises(IncompleteSafeError, match="VH measurement"):
        snap(Path("/opt/snap/bin/gpt")).make(_bs_jobs(product)[0], [(product, broken)], tmp_path)


def test_partial_gpt_output_is_never_registered(gpt: Path, tmp_path: Path, conn: psycopg.Connection,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBM_FAKE_GPT", "partial")
    safe = metadata_only_safe(tmp_path, ROME_GRD)
    registry.register(conn, [rome_product(safe)], aoi="rome")
    plan_aoi(conn, aoi="rome", area_wkt=AREA)
    (product_id,) = claim_jobs(conn, aoi="rome", worker="t")
    store = LocalStore(StoreConfig(root=str(tmp_path / "store"), scratch_dir=str(tmp_path / "scratch")))
    run = lineage.RunContext(step="card")
    with pytest.raises(SnapError):
        process(conn, store, snap(gpt), product_id, aoi="rome", run=run, last_try=True)
    row = conn.execute("SELECT status, last_error FROM cbm.product_status WHERE product_id = %s",
                       (product_id,)).fetchone()
    assert row is not None and row[0] == "new" and "SnapError" in row[1]
    assert not (tmp_path / "store").exists() and list((tmp_path / "scratch").iterdir()) == []
