"""Property-based requests from the OpenAPI schema (schemathesis): no answer is a server error.

Path and query values are generated from the schema; half of them are steered to the world's
AOI, year and parcels so that the generated requests reach the queries and not only the
authorisation check. The example count per operation is bounded to keep the run short.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from api_world import World
from hypothesis import HealthCheck, Phase, settings

from cbm_tasks.api.app import create_app
from cbm_tasks.api.context import ApiConfig
from cbm_tasks.store import StoreConfig

MAX_EXAMPLES = 4
_STEER = {"aoi": "alpha", "year": 2018, "parcels": "alpha2018", "collection_id": "alpha_2018"}


def _steered(context: Any, values: dict[str, Any] | None) -> dict[str, Any] | None:
    """Replace about half of the AOI-like values with the world's (decided by a hash: reproducible)."""
    if not values:
        return values
    if zlib.crc32(repr(sorted(values.items())).encode()) % 2:
        return values
    out = dict(values)
    for name, value in _STEER.items():
        if name in out:
            out[name] = value
    for name in ("key", "pid", "feature_id"):
        if isinstance(out.get(name), int):
            out[name] = 1 + out[name] % 7  # parcels 1..6 and one that does not exist
    return out


_WORLD: list[World] = []  # set by the fixture below before the first request reaches the app


def _config() -> ApiConfig:
    world = _WORLD[-1]
    return ApiConfig(dsn=world.db_url, store=StoreConfig(root=str(world.store_root)))


# the schema is read at import (it needs no database); the app connects on the first request
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(_config))


@schema.hook
def map_path_parameters(context: Any, path_parameters: dict[str, Any]) -> dict[str, Any] | None:
    return _steered(context, path_parameters)


@schema.hook
def map_query(context: Any, query: dict[str, Any]) -> dict[str, Any] | None:
    return _steered(context, query)


@pytest.fixture(scope="module")
def root_token(api_world: World) -> Iterator[str]:
    _WORLD.append(api_world)
    yield f"Bearer root.{api_world.secrets['root']}"
    _WORLD.remove(api_world)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: Any, root_token: str) -> None:
    response = case.call(headers={"Authorization": root_token})
    assert response.status_code < 500, (case.path, case.path_parameters, case.query, response.text[:500])
    if response.status_code >= 400:
        if case.path.startswith(("/query/background", "/query/weather")) and response.status_code == 404:
            assert response.json() in ({}, {**response.json(), "error": "not found"})  # {}: JRC's "no image"
        else:
            assert response.json()["error"], response.text[:200]
