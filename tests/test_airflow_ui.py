"""The Airflow UI in headless Chromium, on one real deployment started for this module.

The maintainer's view: log in, see the CbM DAGs and a successful run. The inspector's: the "Parcel
audit" page behind the same login. At the end everything stops without leaving a process behind.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import airflow_testenv
import psycopg
import pytest
import requests
from audit_seed import AOI, YEAR, seed
from conftest import fresh_database
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from cbm_tasks.ops import airflow_ctl, cluster
from cbm_tasks.ops.airflow_api import AirflowApi

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def ui_db_url(pg_cluster: cluster.ClusterConfig, template_db: str) -> Iterator[str]:
    """The data database the UI deployment's connection cbm_postgis points at (this module's tests share it)."""
    with fresh_database(pg_cluster, template_db) as url:
        yield url


@pytest.fixture(scope="module")
def airflow(ui_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[airflow_ctl.AirflowConfig]:
    """One real deployment for the UI checks of this module: starting Airflow is half a minute of two cores."""
    airflow_testenv.metadata_db()
    cfg = dataclasses.replace(airflow_testenv.config(), data_url=ui_db_url,
                              store_root=tmp_path_factory.mktemp("ui-store"))
    try:
        airflow_ctl.start(cfg, migrate=False, timeout_s=240)
        yield cfg
    finally:
        sessions = [s.pid for s in airflow_ctl.status(cfg) if s.pid is not None]
        airflow_ctl.stop(cfg)
        left = [pid for sid in sessions for pid in airflow_testenv.session_members(sid)]
        assert left == [], f"processes left behind after stop: {left}"
        assert not any(s.running for s in airflow_ctl.status(cfg))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_for_text(driver: webdriver.Chrome, *texts: str, timeout_s: float = 60) -> str:
    def page_has_all(d: webdriver.Chrome) -> str | bool:
        body = d.find_element(By.TAG_NAME, "body").text
        return body if all(t.lower() in body.lower() for t in texts) else False

    try:  # a page (or frame) that navigates while it is read replaces its body: read the new one next time
        return str(WebDriverWait(driver, timeout_s, poll_frequency=1,
                                 ignored_exceptions=(StaleElementReferenceException,)).until(page_has_all))
    except TimeoutException:
        body = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"page {driver.current_url} never showed {texts}; it shows:\n{body[:2000]}") from None


def _log_in(browser: webdriver.Chrome, airflow: airflow_ctl.AirflowConfig, password: str) -> None:
    """Log into the Airflow UI as the admin, as a maintainer does: the login form, then away from it."""
    browser.get(f"{airflow.url}/")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.NAME, "username"))
    browser.find_element(By.NAME, "username").send_keys(airflow_ctl.ADMIN_USER)
    browser.find_element(By.NAME, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 60).until(lambda d: not d.find_elements(By.NAME, "password"))


def test_maintainer_logs_in_and_sees_the_dags_and_a_successful_run(
    airflow: airflow_ctl.AirflowConfig, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    password = airflow_ctl.admin_password(airflow)
    assert airflow.passwords_file.stat().st_mode & 0o777 == 0o600
    status = {s.component: s.running for s in airflow_ctl.status(airflow)}
    assert status == {"api-server": True, "scheduler": True, "dag-processor": True, "triggerer": True}

    # one quick real run through the REST API: nothing is ready, so it claims nothing and succeeds
    api = AirflowApi(airflow.url, username=airflow_ctl.ADMIN_USER, password=password)
    api.wait_for_dags(["cbm_catalogue", "cbm_extract"], timeout_s=180)
    airflow_testenv.quiesce(api)  # a run left by an earlier test would hold this one back (max_active_runs=1)
    api.set_paused("cbm_extract", paused=False)
    run_id = api.trigger("cbm_extract", conf={"aoi": "*"})
    run = api.wait_for_run("cbm_extract", run_id, timeout_s=180)
    assert run["state"] == "success"
    assert api.task_states("cbm_extract", run_id)["claim"] == ["success"]

    _log_in(browser, airflow, password)

    browser.get(f"{airflow.url}/dags")
    dag_list = _wait_for_text(browser, "cbm_catalogue", "cbm_extract")
    browser.save_screenshot(str(tmp_path / "dags.png"))
    assert "catalogue" in dag_list and "extract" in dag_list

    browser.get(f"{airflow.url}/dags/cbm_extract/runs/{run_id}")
    run_page = _wait_for_text(browser, run_id, "success", "claim")  # the task list loads after the header
    time.sleep(1)  # let the grid finish drawing before the picture
    browser.save_screenshot(str(tmp_path / "run.png"))
    assert "claim" in run_page
    for picture in ("dags.png", "run.png"):
        data = (tmp_path / picture).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_parcel_audit_page_behind_login(airflow: airflow_ctl.AirflowConfig, browser: webdriver.Chrome,
                                        tmp_path: Path) -> None:
    with psycopg.connect(airflow.data_url, autocommit=True) as conn:
        seed(conn, tmp_path / "seed", n_parcels=4)
        parcel_id, key = conn.execute(
            "SELECT p.parcel_id, p.parcel_key FROM cbm.parcel p JOIN cbm.marker_event e USING (parcel_key) "
            "WHERE e.marker = 'mowing' ORDER BY 1 LIMIT 1").fetchone()
        lights = conn.execute("SELECT scheme, colour, reason FROM cbm.traffic_light WHERE parcel_key = %s",
                              (key,)).fetchall()
    query = f"aoi={AOI}&year={YEAR}&parcel={parcel_id}"
    # not logged in: refused
    assert requests.get(f"{airflow.url}/cbm-audit/?{query}", timeout=30).status_code == 401
    assert requests.get(f"{airflow.url}/cbm-audit/plot.png?{query}", timeout=30).status_code == 401

    password = airflow_ctl.admin_password(airflow)
    _log_in(browser, airflow, password)

    # the menu entry opens the page inside the UI
    browser.get(f"{airflow.url}/plugin/cbm-audit")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.TAG_NAME, "iframe"))
    frame = browser.find_element(By.TAG_NAME, "iframe")
    assert frame.get_attribute("src").endswith("/cbm-audit/")
    browser.switch_to.frame(frame)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.ID, "parcel"))
    browser.find_element(By.ID, "aoi").send_keys(AOI)
    browser.find_element(By.ID, "year").send_keys(str(YEAR))
    browser.find_element(By.ID, "parcel").send_keys(parcel_id)
    browser.find_element(By.ID, "show").click()
    page = _wait_for_text(browser, f"Parcel {parcel_id}", "Traffic lights", "mowing")
    rows = [" ".join(row.text.split()) for row in browser.find_elements(By.CSS_SELECTOR, "#lights tr")]
    assert len(lights) > 0
    for scheme, colour, reason in lights:
        assert any(f"{scheme} {colour} {reason}" in row for row in rows), (scheme, colour, reason, rows, page)
    # the images behind the events, from connection cbm_store: the seeded products have no files, so each
    # picture is replaced by the reason the store gives
    evidence = " ".join(browser.find_element(By.ID, "evidence").text.split())
    assert "mowing #1" in evidence and "not shown: the local store cannot open 'synthetic://" in evidence, evidence
    WebDriverWait(browser, 60).until(
        lambda d: d.execute_script("const i = document.getElementById('plot'); return i.complete && i.naturalWidth"))
    assert browser.execute_script("return document.getElementById('plot').naturalWidth") > 400
    time.sleep(0.5)
    browser.save_screenshot(str(tmp_path / "audit_page.png"))
    report_href = browser.find_element(By.ID, "report").get_attribute("href")
    browser.switch_to.default_content()
    assert (tmp_path / "audit_page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    browser.get(report_href)
    report = _wait_for_text(browser, f"Audit report: parcel {parcel_id}", "Products used and their lineage")
    assert "Reproducibility stamp" in report and "Images behind the events" in report

    browser.get(f"{airflow.url}/cbm-audit/?aoi={AOI}&year={YEAR}&parcel=NOPE")
    assert "parcel 'NOPE' is not in the 2018 parcel set" in _wait_for_text(browser, "NOPE")
