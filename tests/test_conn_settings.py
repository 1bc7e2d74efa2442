"""dags/cbm_conn.py: where the catalogue settings of an AOI come from, in the documented order."""

from __future__ import annotations

import json

import airflow_testenv
import pytest

airflow_testenv.activate()  # before any airflow import

import cbm_conn  # noqa: E402  (dags/ is on sys.path, as in Airflow's bundle loader)

from cbm_tasks.catalogue.clients import CatalogueConfig  # noqa: E402


@pytest.fixture(autouse=True)
def _no_catalogue_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_VAR_CBM_CATALOGUE", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_CBM_CATALOGUE", raising=False)


def _variable(monkeypatch: pytest.MonkeyPatch, value: object) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_CBM_CATALOGUE", json.dumps(value))


def _connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CBM_CATALOGUE", json.dumps({
        "conn_type": "http", "host": "https://stac.example.test/v1", "password": "s3cret",
        "extra": {"kind": "cdse-stac", "page_size": 50}}))


def test_nothing_set_means_the_public_cdse_odata_catalogue() -> None:
    assert cbm_conn.catalogue_config("nl") == CatalogueConfig()
    assert CatalogueConfig().kind == "cdse-odata" and CatalogueConfig().url is None


def test_the_connection_is_used_when_the_variable_has_no_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    _connection(monkeypatch)
    _variable(monkeypatch, {"demo": {"kind": "local", "root": "/srv/demo"}})
    config = cbm_conn.catalogue_config("nl")
    assert (config.kind, config.url, config.page_size, config.bearer_token) == (
        "cdse-stac", "https://stac.example.test/v1", 50, "s3cret")
    assert "s3cret" not in repr(config)


def test_the_aoi_entry_wins_over_star_and_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    _connection(monkeypatch)
    _variable(monkeypatch, {"demo": {"kind": "local", "root": "/srv/demo"}, "*": {"kind": "cdse-odata",
                                                                               "page_size": 10}})
    assert cbm_conn.catalogue_config("demo") == CatalogueConfig(kind="local", root="/srv/demo")
    assert cbm_conn.catalogue_config("nl") == CatalogueConfig(kind="cdse-odata", page_size=10)  # '*' next


def test_a_misspelt_setting_or_a_bad_variable_fails_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    _variable(monkeypatch, {"demo": {"kind": "local", "rooot": "/srv/demo"}})
    with pytest.raises(TypeError, match="rooot"):
        cbm_conn.catalogue_config("demo")
    _variable(monkeypatch, ["not", "an", "object"])
    with pytest.raises(TypeError, match="must be a JSON object of AOI -> settings, got list"):
        cbm_conn.catalogue_config("demo")


def test_api_backgrounds_come_from_their_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The REST API's orthophoto sources (JRC's backgrounds): Variable cbm_backgrounds, names lower-cased."""
    from cbm_tasks.errors import ConfigError

    monkeypatch.setenv("AIRFLOW_CONN_CBM_POSTGIS", json.dumps({"conn_type": "postgres", "host": "127.0.0.1",
                                                               "port": 5432, "schema": "cbm", "login": "cbm"}))
    monkeypatch.delenv("AIRFLOW_CONN_CBM_API", raising=False)
    monkeypatch.delenv("AIRFLOW_VAR_CBM_BACKGROUNDS", raising=False)
    assert cbm_conn.api_config().backgrounds == {}
    monkeypatch.setenv("AIRFLOW_VAR_CBM_BACKGROUNDS", json.dumps({"Ortho": "/data/ortho.vrt"}))
    config = cbm_conn.api_config()
    assert config.backgrounds == {"ortho": "/data/ortho.vrt"} and "ortho" in repr(config)
    monkeypatch.setenv("AIRFLOW_VAR_CBM_BACKGROUNDS", '{"ortho": ""}')
    with pytest.raises(ConfigError, match="Variable cbm_backgrounds"):
        cbm_conn.api_config()


def test_api_band_naming_comes_from_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Variable cbm_jrc_band_names: B04 (as JRC's servers) unless set to B4; anything else fails by name."""
    from cbm_tasks.errors import ConfigError

    monkeypatch.setenv("AIRFLOW_CONN_CBM_POSTGIS", json.dumps({"conn_type": "postgres", "host": "127.0.0.1",
                                                               "port": 5432, "schema": "cbm", "login": "cbm"}))
    monkeypatch.delenv("AIRFLOW_CONN_CBM_API", raising=False)
    monkeypatch.delenv("AIRFLOW_VAR_CBM_BACKGROUNDS", raising=False)
    monkeypatch.delenv("AIRFLOW_VAR_CBM_JRC_BAND_NAMES", raising=False)
    assert cbm_conn.api_config().jrc_band_names == "B04"
    monkeypatch.setenv("AIRFLOW_VAR_CBM_JRC_BAND_NAMES", "B4")
    assert cbm_conn.api_config().jrc_band_names == "B4"
    monkeypatch.setenv("AIRFLOW_VAR_CBM_JRC_BAND_NAMES", "padded")
    with pytest.raises(ConfigError, match="Variable cbm_jrc_band_names.*got 'padded'"):
        cbm_conn.api_config()
