"""The retry policy and error translation of catalogue HTTP calls, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import requests
from catalogue_replay import Recorded, ReplayServer, Reply, json_reply, replay_server, sequence

from cbm_tasks.catalogue.http import RetryPolicy, make_session, request_json, retry_after_s
from cbm_tasks.errors import CatalogueResponseError, TransientError


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    with replay_server() as running:
        yield running


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with make_session(bearer_token="secret-token") as http:
        yield http


def test_retry_after_in_seconds_and_as_http_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_s("120", now=now) == 120.0
    assert retry_after_s(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30.0
    assert retry_after_s(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0.0
    assert retry_after_s("soon", now=now) is None
    assert retry_after_s(None) is None


def test_backoff_doubles_with_equal_jitter_and_is_capped() -> None:
    policy = RetryPolicy(base_delay_s=2.0, max_delay_s=10.0)
    assert [policy.backoff_s(n, rng=lambda: 0.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    assert [policy.backoff_s(n, rng=lambda: 1.0) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 10.0]
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_retry_after_http_date_is_honoured(server: ReplayServer, session: requests.Session) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    server.route("GET", "/x", sequence([Reply(429, b"slow down", {"Retry-After": when}), json_reply({"ok": 1})]))
    waits: list[float] = []
    assert request_json(session, server.base_url + "/x", sleep=waits.append) == {"ok": 1}
    assert len(waits) == 1 and 17.0 <= waits[0] <= 20.0


def test_total_time_cap_stops_before_a_long_retry_after(server: ReplayServer, session: requests.Session) -> None:
    server.route("GET", "/x", sequence([Reply(503, b"", {"Retry-After": "600"})]))
    waits: list[float] = []
    with pytest.raises(TransientError, match=r"/x: gave up after 1 attempt.*HTTP 503.*max_total_s=300"):
        request_json(session, server.base_url + "/x", sleep=waits.append)
    assert waits == []  # the server asked for 10 minutes; the budget is 5


def test_read_timeout_is_retried_then_transient(server: ReplayServer, session: requests.Session) -> None:
    def slow(_: Recorded) -> Reply:
        time.sleep(0.3)
        return json_reply({"late": True})

    server.route("GET", "/slow", slow)
    policy = RetryPolicy(max_attempts=2, timeout_s=0.1)
    waits: list[float] = []
    with pytest.raises(TransientError, match=r"/slow: gave up after 2 attempt.*ReadTimeout"):
        request_json(session, server.base_url + "/slow", policy=policy, sleep=waits.append)
    assert len(waits) == 1


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (400, {"error": {"code": "400", "message": "Invalid $filter"}}, "Invalid \\$filter"),
        (401, {"detail": "Not authenticated"}, "Not authenticated"),
        (404, {"code": "NotFound", "description": "No collection sentinel-9"}, "No collection sentinel-9"),
    ],
)
def test_client_errors_name_url_status_and_message(
    server: ReplayServer, session: requests.Session, status: int, body: dict[str, object], message: str
) -> None:
    server.route("GET", "/x", sequence([json_reply(body, status=status)]))
    with pytest.raises(CatalogueResponseError, match=rf"GET {server.base_url}/x\?a=1: HTTP {status} .*{message}"):
        request_json(session, server.base_url + "/x", params={"a": 1})
    assert len(server.requests) == 1


def test_plain_text_error_body_is_quoted(server: ReplayServer, session: requests.Session) -> None:
    server.route("GET", "/x", sequence([Reply(403, b"Forbidden by policy")]))
    with pytest.raises(CatalogueResponseError, match="HTTP 403 .*Forbidden by policy"):
        request_json(session, server.base_url + "/x")


def test_session_sends_user_agent_and_token(server: ReplayServer, session: requests.Session) -> None:
    server.route("GET", "/x", sequence([json_reply({})]))
    request_json(session, server.base_url + "/x")
    headers = server.requests[0].headers
    assert headers["User-Agent"].startswith("cbm-airflow-catalogue/")
    assert headers["Authorization"] == "Bearer secret-token"
