"""The "Parcel audit" page in the real Airflow UI, behind its login, in headless Chromium."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import requests
from audit_seed import AOI, YEAR, seed
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_airflow_ui import _wait_for_text, airflow, browser  # noqa: F401 - fixtures

from cbm_tasks.ops import airflow_ctl


def test_parcel_page_behind_login(airflow: airflow_ctl.AirflowConfig, browser: webdriver.Chrome,  # noqa: F811
                                  db_url: str, tmp_path: Path) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
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
    browser.get(f"{airflow.url}/")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.NAME, "username"))
    browser.find_element(By.NAME, "username").send_keys(airflow_ctl.ADMIN_USER)
    browser.find_element(By.NAME, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 60).until(lambda d: not d.find_elements(By.NAME, "password"))

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
