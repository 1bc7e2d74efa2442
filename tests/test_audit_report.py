"""Parcel audit reports (HTML, PDF), run reports and the reproducibility check on a seeded parcel set."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from audit_seed import AOI, YEAR, Seeded, seed
from markupsafe import escape
from matplotlib.image import imread

from cbm_tasks import lineage
from cbm_tasks.cli import main
from cbm_tasks.errors import NotFoundError
from cbm_tasks.report.decisions import scheme_markers
from cbm_tasks.report.parcel_audit import gather, pick_parcel
from cbm_tasks.report.render import write_parcel_report
from cbm_tasks.report.run_report import run_report, write_run_report
from cbm_tasks.report.verify import verify_parcel_set
from cbm_tasks.traffic_light import load_rules


@pytest.fixture
def seeded_db(db_url: str, tmp_path: Path) -> Iterator[tuple[psycopg.Connection, Seeded]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn, seed(conn, tmp_path)


def _parcel_with_events(conn: psycopg.Connection) -> tuple[str, int]:
    row = conn.execute(
        "SELECT p.parcel_id, p.parcel_key FROM cbm.parcel p JOIN cbm.marker_event e USING (parcel_key) "
        "JOIN cbm.traffic_light t ON t.parcel_set_id = p.parcel_set_id AND t.parcel_key = p.parcel_key "
        "WHERE e.marker = 'mowing' ORDER BY p.parcel_id LIMIT 1").fetchone()
    assert row is not None, "the seeded set has a mown parcel with a light"
    return str(row[0]), int(row[1])


def test_parcel_report_html_and_pdf(seeded_db: tuple[psycopg.Connection, Seeded], tmp_path: Path) -> None:
    conn, seeded = seeded_db
    parcel_id, key = _parcel_with_events(conn)
    audit = gather(conn, aoi=AOI, year=YEAR, parcel_id=parcel_id)
    files = write_parcel_report(audit, tmp_path / "out")
    html = files.html.read_text()
    crop, area = conn.execute("SELECT crop_code, area_m2 FROM cbm.parcel WHERE parcel_key = %s", (key,)).fetchone()
    assert f"Audit report: parcel {parcel_id}" in html and crop in html and f"{area / 10000:.2f} ha" in html
    assert '<svg class="map" id="outline"' in html and 'src="data:image/png;base64,' in html
    assert "<th>pixels from</th><td>whole parcel (no inner buffer)</td>" in html
    lights = conn.execute("SELECT scheme, colour, reason, rule_id FROM cbm.traffic_light WHERE parcel_key = %s "
                          "ORDER BY scheme", (key,)).fetchall()
    lights_table = html[html.index('<table id="lights">'):html.index("</table>", html.index('<table id="lights">'))]
    assert len(audit.lights) == len(lights) > 0
    for scheme, colour, reason, rule_id in lights:
        assert re.search(rf"<td>{scheme}</td><td><span class=\"light {colour}\">.*?<td>{reason}</td>\s*<td>{rule_id}",
                         lights_table, re.S)
    # why each light: every rule of its scheme re-evaluated with the stored rules gives the stored colour
    assert [(x.scheme, x.colour, x.reason, x.rule_id) for x in audit.light_explanations] == sorted(lights)
    why = html[html.index('<table id="light-rules">'):html.index("</table>", html.index('<table id="light-rules">'))]
    assert all(r.rule_id in why and f"{r.window_from} .. {r.window_to}" in why
               for x in audit.light_explanations for r in x.rules)
    # a light decided by an event names it, its date and the images that prove it
    deciding = conn.execute("SELECT event_marker, event_seq, event_main_date, event_products "
                            "FROM cbm.traffic_light_trace WHERE parcel_key = %s AND event_seq > 0", (key,)).fetchall()
    assert deciding and all(f"{marker} #{seq}, {main} (images {', '.join(map(str, images))})" in lights_table
                            for marker, seq, main, images in deciding)
    # its figure draws the events of the markers its schemes' rules read, as the stored rules file says
    rules = load_rules()
    assert scheme_markers(conn, audit.lights) == {rule.marker for light in audit.lights
                                                   for rule in rules.schemes[light.scheme].rules} != set()
    events = conn.execute("SELECT marker, main_date FROM cbm.marker_event WHERE parcel_key = %s", (key,)).fetchall()
    assert len(audit.events) == len(events) > 0
    assert all(str(main) in html for _, main in events)
    # each event names the images its start and end dates come from
    markers_table = html[html.index('<table id="markers">'):html.index("</table>", html.index('<table id="markers">'))]
    bracketed = conn.execute("SELECT start_product, end_product FROM cbm.marker_event WHERE parcel_key = %s "
                             "AND start_product IS NOT NULL AND end_product IS NOT NULL", (key,)).fetchall()
    assert len(bracketed) > 0 and all(f"{start} &rarr; {end}" in markers_table for start, end in bracketed)
    # why a mowing was found: the NDVI falls of the season judged as cuts, the stored cuts among them
    falls = html[html.index('<table id="falls">'):html.index("</table>", html.index('<table id="falls">'))]
    mown = [str(main) for marker, main in events if marker == "mowing"]
    assert mown and [s.main_date for s in audit.mowing_falls if s.verdict == "mowing"] == sorted(mown)
    assert falls.count("<b>mowing</b>") == len(mown) and all(s.start_date in falls for s in audit.mowing_falls)
    # a cut's row says how sure it is, part by part (drop, dating, regrowth, red rise, S1), as the command line does
    cuts = [s for s in audit.mowing_falls if s.verdict == "mowing"]
    assert all(s.confidence_parts and f'<b>mowing</b><span class="small"> ({escape(s.confidence_parts)})</span>'
               in falls for s in cuts)
    # every product of the parcel's series, each with its extraction run
    products = conn.execute("SELECT DISTINCT pr.name FROM cbm.parcel_obs o JOIN cbm.product pr USING (product_id) "
                            "WHERE o.parcel_key = %s", (key,)).fetchall()
    assert len(audit.products) == len(products) == len(seeded.product_ids)
    assert all(name in html for (name,) in products)
    assert all(f"run {seeded.extraction_runs[p.product_id]} (success): cbm_extract" in html for p in audit.products)
    assert f"{len(products)} products; {len(products)} with an extraction run record, extracted by code " in html
    assert audit.stamp.params_hash in html and lineage.code_version() in html
    assert f"{audit.n_obs_used} clear Sentinel-2 observations used, {audit.n_obs_rejected} rejected" in html
    assert audit.n_obs_rejected > 0  # the seeded set has cloudy observations: shown as rejected

    assert files.pdf is not None and files.pdf.read_bytes().startswith(b"%PDF")
    subprocess.run(["pdftoppm", "-png", "-r", "60", str(files.pdf), str(tmp_path / "page")], check=True, timeout=60)
    pages = sorted(tmp_path.glob("page*.png"))
    assert len(pages) >= 2  # the report does not fit one A4 page
    first = imread(pages[0])[..., :3]
    ink = (first < 0.85).any(axis=2)
    assert 0.02 < ink.mean() < 0.6 and first.std() > 0.1  # text, tables and colours, not a blank page
    keep = Path("/tmp/cbm-audit-pages")
    keep.mkdir(exist_ok=True)
    for page in [*pages, files.html]:  # for a person to look at
        shutil.copy(page, keep / page.name)


def test_report_says_which_outline_the_pixels_came_from(seeded_db: tuple[psycopg.Connection, Seeded],
                                                        tmp_path: Path) -> None:
    conn, seeded = seeded_db
    shrunk, narrow = (r[0] for r in conn.execute("SELECT parcel_id FROM cbm.parcel ORDER BY parcel_key LIMIT 2"))
    # the set as `cbm parcels import --inner-buffer 10` leaves it, one parcel too narrow for the buffer
    conn.execute("UPDATE cbm.parcel_set SET inner_buffer_m = 10 WHERE parcel_set_id = %s", (seeded.parcel_set_id,))
    conn.execute("UPDATE cbm.parcel SET geom_inner = cbm.inner_geometry(geom, 10, false) WHERE parcel_id = %s",
                 (shrunk,))
    (inner_ha,) = conn.execute("SELECT ST_Area(geom_inner) / 10000 FROM cbm.parcel WHERE parcel_id = %s",
                               (shrunk,)).fetchone()
    html = write_parcel_report(gather(conn, aoi=AOI, year=YEAR, parcel_id=shrunk), tmp_path / "a",
                               pdf=False).html.read_text()
    assert f"<th>pixels from</th><td>parcel shrunk by 10 m (dashed; {inner_ha:.2f} ha)</td>" in html
    assert '<path id="inner" d="M' in html and "stroke-dasharray" in html
    html = write_parcel_report(gather(conn, aoi=AOI, year=YEAR, parcel_id=narrow), tmp_path / "b",
                               pdf=False).html.read_text()
    assert "<td>whole parcel (too narrow for the 10 m inner buffer)</td>" in html
    assert '<path id="inner"' not in html


def test_report_of_an_arable_parcel_judges_its_crop_cycles(seeded_db: tuple[psycopg.Connection, Seeded],
                                                          tmp_path: Path) -> None:
    # a parcel whose scheme reads the harvest marker: its crop cycles judged as harvests, the stored harvests
    # among them; and no table of NDVI falls judged as cuts when no scheme of it reads the mowing marker
    conn, _ = seeded_db
    row = conn.execute(
        "SELECT p.parcel_id, p.parcel_key FROM cbm.parcel p JOIN cbm.marker_event e USING (parcel_key) "
        "JOIN cbm.traffic_light t ON t.parcel_set_id = p.parcel_set_id AND t.parcel_key = p.parcel_key "
        "WHERE e.marker = 'harvest' AND t.scheme = 'arable_harvest' ORDER BY p.parcel_id LIMIT 1").fetchone()
    assert row is not None, "the seeded set has a harvested arable parcel"
    audit = gather(conn, aoi=AOI, year=YEAR, parcel_id=str(row[0]))
    html = write_parcel_report(audit, tmp_path / "out", pdf=False).html.read_text()
    stored = conn.execute("SELECT event_start::text, event_end::text FROM cbm.marker_event WHERE parcel_key = %s "
                          "AND marker = 'harvest' ORDER BY event_start", (row[1],)).fetchall()
    assert [(c.last_high_date, c.low_date) for c in audit.harvest_cycles if c.verdict == "harvest"] == stored
    cycles = html[html.index('<table id="cycles">'):html.index("</table>", html.index('<table id="cycles">'))]
    assert cycles.count("<b>harvest</b>") == len(stored) > 0
    if "mowing" not in scheme_markers(conn, audit.lights):
        assert audit.mowing_falls == [] and 'id="falls"' not in html


def test_report_of_a_permanent_grassland_judges_its_low_observations(
        seeded_db: tuple[psycopg.Connection, Seeded], tmp_path: Path) -> None:
    # a parcel whose scheme reads the bare soil marker (permanent grassland: no ploughing): its observations below
    # the soil line judged, and its runs of bare soil are the stored bare soil events
    conn, _ = seeded_db

    def stored_runs(key: int) -> list[tuple[str, str]]:
        return conn.execute("SELECT event_start::text, event_end::text FROM cbm.marker_event WHERE parcel_key = %s "
                            "AND marker = 'bare_soil' ORDER BY event_start", (key,)).fetchall()

    grass = conn.execute(
        "SELECT DISTINCT p.parcel_id, p.parcel_key FROM cbm.parcel p JOIN cbm.traffic_light t "
        "ON t.parcel_set_id = p.parcel_set_id AND t.parcel_key = p.parcel_key "
        "WHERE t.scheme = 'permanent_grassland' ORDER BY p.parcel_id").fetchall()
    assert grass, "the seeded set has permanent grassland"
    for parcel_id, key in grass:
        audit = gather(conn, aoi=AOI, year=YEAR, parcel_id=str(parcel_id))
        assert audit.bare_soil is not None and "bare_soil" in scheme_markers(conn, audit.lights)
        assert [(r.start_date, r.end_date) for r in audit.bare_soil.runs] == stored_runs(key)
    html = write_parcel_report(audit, tmp_path / "grass", pdf=False).html.read_text()
    assert "Observations judged as bare soil" in html and "rejected as clouds" in html
    # an arable parcel with bare soil in spring: no such table while its only scheme is arable_harvest; declared
    # permanent grassland, its runs are listed and are its stored bare soil events
    parcel_id, key = conn.execute(
        "SELECT p.parcel_id, p.parcel_key FROM cbm.parcel p JOIN cbm.traffic_light t ON t.parcel_set_id = "
        "p.parcel_set_id AND t.parcel_key = p.parcel_key JOIN cbm.marker_event e ON e.parcel_key = p.parcel_key "
        "AND e.marker = 'bare_soil' GROUP BY 1, 2 HAVING bool_and(t.scheme = 'arable_harvest') "
        "ORDER BY 1 LIMIT 1").fetchone()
    assert gather(conn, aoi=AOI, year=YEAR, parcel_id=parcel_id).bare_soil is None
    conn.execute("UPDATE cbm.traffic_light SET scheme = 'permanent_grassland' WHERE parcel_key = %s", (key,))
    audit = gather(conn, aoi=AOI, year=YEAR, parcel_id=parcel_id)
    assert audit.bare_soil is not None and audit.bare_soil.runs
    assert [(r.start_date, r.end_date) for r in audit.bare_soil.runs] == stored_runs(key)
    html = write_parcel_report(audit, tmp_path / "arable", pdf=False).html.read_text()
    runs = html[html.index('<table id="bare-runs">'):html.index("</table>", html.index('<table id="bare-runs">'))]
    assert all(r.start_date in runs and r.confidence_parts in runs for r in audit.bare_soil.runs)


def test_report_of_a_parcel_without_lights_explains_every_marker(seeded_db: tuple[psycopg.Connection, Seeded],
                                                                 tmp_path: Path) -> None:
    # no light says which markers matter: every explanation is shown, each naming exactly the stored events
    conn, _ = seeded_db
    parcel_id, key = conn.execute(
        "SELECT p.parcel_id, p.parcel_key FROM cbm.parcel p JOIN cbm.marker_event e USING (parcel_key) "
        "WHERE e.marker = 'emergence' ORDER BY 1 LIMIT 1").fetchone()
    conn.execute("DELETE FROM cbm.traffic_light WHERE parcel_key = %s", (key,))
    audit = gather(conn, aoi=AOI, year=YEAR, parcel_id=parcel_id)
    assert audit.lights == [] and audit.bare_soil is not None

    def stored(marker: str) -> list[tuple[str, str]]:
        return conn.execute("SELECT event_start::text, event_end::text FROM cbm.marker_event WHERE parcel_key = %s "
                            "AND marker = %s ORDER BY event_start", (key, marker)).fetchall()

    assert [(c.start_date, c.end_date) for c in audit.emergence_rises if c.verdict == "emergence"] == \
        stored("emergence") != []
    assert [(r.start_date, r.end_date) for r in audit.bare_soil.runs] == stored("bare_soil")
    assert [(c.last_high_date, c.low_date) for c in audit.harvest_cycles if c.verdict == "harvest"] == \
        stored("harvest")
    html = write_parcel_report(audit, tmp_path / "out", pdf=False).html.read_text()
    rises = html[html.index('<table id="rises">'):html.index("</table>", html.index('<table id="rises">'))]
    assert rises.count("<b>emergence</b>") == len(stored("emergence"))
    assert 'id="falls"' in html and 'id="cycles"' in html and "Observations judged as bare soil" in html


def test_report_notes_parameters_changed_after_the_run(seeded_db: tuple[psycopg.Connection, Seeded]) -> None:
    # a marker run record whose parameters no longer hash to the recorded value: the report says so
    conn, _ = seeded_db
    parcel_id, _ = _parcel_with_events(conn)
    conn.execute("UPDATE cbm.marker_run SET params = jsonb_set(params, '{mowing,min_drop}', '0.2')")
    notes = gather(conn, aoi=AOI, year=YEAR, parcel_id=parcel_id).notes
    assert any("were changed after the run" in note for note in notes)


def test_report_of_unknown_parcel_names_it(seeded_db: tuple[psycopg.Connection, Seeded]) -> None:
    conn, _ = seeded_db
    # the demo's choice: a parcel with a red or yellow light when there is one, else one with a light
    lit = dict(conn.execute(
        "SELECT p.parcel_id, bool_or(t.colour <> 'green') FROM cbm.traffic_light t "
        "JOIN cbm.parcel p USING (parcel_set_id, parcel_key) GROUP BY 1").fetchall())
    chosen = pick_parcel(conn, aoi=AOI, year=YEAR)
    assert chosen in lit and lit[chosen] == any(lit.values())
    with pytest.raises(NotFoundError, match="parcel 'NOPE' is not in the 2018 parcel set of AOI 'audited'"):
        gather(conn, aoi=AOI, year=YEAR, parcel_id="NOPE")


def test_verify_finds_nothing_then_exactly_the_altered_parcel(seeded_db: tuple[psycopg.Connection, Seeded]) -> None:
    conn, _ = seeded_db
    clean = verify_parcel_set(conn, aoi=AOI, year=YEAR)
    assert clean.parcels_checked == 12 and clean.events_checked > 0 and clean.lights_checked >= 12
    assert clean.differences == ()
    parcel_id, key = _parcel_with_events(conn)
    # an event that names another image than the one its date comes from is found
    stored = conn.execute("UPDATE cbm.marker_event SET end_product = start_product WHERE parcel_key = %s "
                          "AND marker = 'mowing' AND seq = 1 RETURNING start_product", (key,)).fetchone()
    wrong = verify_parcel_set(conn, aoi=AOI, year=YEAR, parcel_id=parcel_id).differences
    assert [(d.what, d.field) for d in wrong] == [("event mowing#1", "images")]
    assert f"end {stored[0]} evidence" in wrong[0].stored and f"end {stored[0]} evidence" not in wrong[0].recomputed
    conn.execute("UPDATE cbm.marker_event SET end_product = evidence[2] WHERE parcel_key = %s "
                 "AND marker = 'mowing' AND seq = 1", (key,))  # a mowing's evidence: start, end (, S1 pairs)
    assert verify_parcel_set(conn, aoi=AOI, year=YEAR, parcel_id=parcel_id).differences == ()
    # one clear Sentinel-2 observation of the parcel in June: its NIR mean becomes its red mean (NDVI 0)
    product_id, bands = conn.execute(
        "SELECT pr.product_id, e.bands FROM cbm.marker_parcel m CROSS JOIN LATERAL unnest(m.obs_used) AS u(product_id) "
        "JOIN cbm.product pr ON pr.product_id = u.product_id JOIN cbm.extraction e ON e.product_id = pr.product_id "
        "WHERE m.parcel_key = %s AND pr.product_type = 'S2MSI2A' AND extract(month FROM pr.acquired_at) = 6 "
        "ORDER BY pr.acquired_at LIMIT 1", (key,)).fetchone()
    b04, b08 = bands.index("B04"), bands.index("B08")
    conn.execute("UPDATE cbm.parcel_obs SET stats[%s] = stats[%s] WHERE parcel_key = %s AND product_id = %s",
                 (b08 * 8 + 2, b04 * 8 + 2, key, product_id))
    altered = verify_parcel_set(conn, aoi=AOI, year=YEAR)
    assert altered.parcels_differing == [parcel_id]
    assert len(altered.differences) >= 1
    one = verify_parcel_set(conn, aoi=AOI, year=YEAR, parcel_id=parcel_id)
    assert one.parcels_checked == 1 and one.differences == altered.differences


def test_audit_commands(seeded_db: tuple[psycopg.Connection, Seeded], db_url: str, tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    conn, _ = seeded_db
    monkeypatch.setenv("CBM_DATABASE_URL", db_url)
    assert main(["audit", "verify", "--aoi", AOI, "--year", str(YEAR)]) == 0
    assert "0 differences in 0 parcels" in capsys.readouterr().out
    conn.execute("UPDATE cbm.marker_event SET confidence = 0.01 WHERE (marker_run_id, parcel_key, marker, seq) = "
                 "(SELECT marker_run_id, parcel_key, marker, seq FROM cbm.marker_event ORDER BY 2, 3, 4 LIMIT 1)")
    assert main(["audit", "verify", "--aoi", AOI, "--year", str(YEAR)]) == 1
    out = capsys.readouterr().out
    assert "1 differences in 1 parcels" in out and "confidence: stored 0.0099999" in out
    assert main(["audit", "verify", "--aoi", AOI, "--year", str(YEAR), "--parcel", "NOPE"]) == 2
    capsys.readouterr()
    assert main(["audit", "parcel", "--aoi", AOI, "--year", str(YEAR), "--parcel", "P0000001", "--out",
                 str(tmp_path / "cli"), "--no-pdf"]) == 0
    assert capsys.readouterr().out.startswith(str(tmp_path / "cli" / f"{AOI}_{YEAR}_P0000001.html"))
    assert main(["audit", "run", "manual__audit"]) == 0
    assert capsys.readouterr().out.startswith("run manual__audit (cbm_markers): 1 task instances, 1 succeeded")


def test_run_report_counts_tries_failures_and_rows(seeded_db: tuple[psycopg.Connection, Seeded],
                                                   tmp_path: Path) -> None:
    conn, seeded = seeded_db
    report = run_report(conn, "manual__audit")
    assert (report.processed, report.succeeded, report.failed, report.retried) == (1, 1, 0, 0)
    events, lights = (conn.execute(f"SELECT count(*) FROM cbm.{t}").fetchone()[0]  # noqa: S608
                      for t in ("marker_event", "traffic_light"))
    assert report.rows_by_table == {"cbm.marker_event": events, "cbm.traffic_light": lights}
    assert report.rows_written == events + lights and report.seconds is not None

    extraction = run_report(conn, "scheduled__seed")
    assert extraction.processed == len(seeded.product_ids) and extraction.rows_by_table == {
        "cbm.parcel_obs": 12 * len(seeded.product_ids)}
    # a task that failed once and succeeded on its retry, and one that failed for good
    for try_number, status in ((1, "failed"), (2, "success")):
        ctx = lineage.RunContext(step="extract", dag_id="cbm_extract", run_id="scheduled__seed", task_id="extract",
                                 map_index=99, try_number=try_number)
        run_id = lineage.start_run(conn, ctx)
        lineage.finish_run(conn, run_id, status=status, error="TransientError: lost connection" if try_number == 1
                           else None)
    ctx = lineage.RunContext(step="extract", dag_id="cbm_extract", run_id="scheduled__seed", task_id="extract",
                             map_index=100, try_number=1)
    lineage.finish_run(conn, lineage.start_run(conn, ctx), status="failed", error="CorruptProductError: product 9")
    again = run_report(conn, "scheduled__seed")
    assert (again.processed, again.succeeded, again.failed, again.retried) == (
        len(seeded.product_ids) + 2, len(seeded.product_ids) + 1, 1, 1)
    text = write_run_report(again, tmp_path / "runs").read_text()
    assert "extract[100]: failed after 1 try" in text and "CorruptProductError: product 9" in text
    assert "extract[99]: success after 2 tries" in text
    assert (tmp_path / "runs" / "scheduled__seed.json").exists()
    with pytest.raises(NotFoundError, match="'manual__nothing' left no lineage record"):
        run_report(conn, "manual__nothing")


