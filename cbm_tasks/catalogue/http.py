"""HTTP for the catalogue clients: one session factory and one retry policy.

Catalogue services are shared and rate-limited (CDSE answers 429 with ``Retry-After`` and
sheds load with 502/503/504). A poll that gives up on the first hiccup makes Airflow retry the
whole task; one that retries forever holds a worker slot. So each request is retried a
bounded number of times within a bounded total time, with exponential backoff and jitter
(many DAG runs start on the same minute; jitter spreads their retries), and the server's
``Retry-After`` wins when it is given. What remains is raised as :class:`TransientError`
(Airflow retries the task later); a 4xx other than 429 is the request's fault and is raised
as :class:`CatalogueResponseError` (never retried).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from cbm_tasks.errors import CatalogueResponseError, TransientError

__all__ = [
    "DEFAULT_RETRY",
    "USER_AGENT",
    "RetryPolicy",
    "error_message",
    "make_session",
    "request_json",
    "request_text",
    "retry_after_s",
]

log = logging.getLogger(__name__)

USER_AGENT = "cbm-airflow-catalogue/0.1 (+https://github.com/ec-jrc/cbm)"

Sleep = Callable[[float], None]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long a catalogue request is retried.

    Attributes:
        max_attempts: requests in total, the first included (>= 1).
        base_delay_s: delay before the second attempt; doubles with every further attempt.
        max_delay_s: cap of one backoff delay (a longer ``Retry-After`` is still honoured
            as long as it fits in ``max_total_s``).
        max_total_s: give up when the next wait would end later than this after the first
            request was sent (time in requests plus waits).
        timeout_s: connect and read timeout of one request.
        retry_statuses: HTTP statuses that are retried (besides timeouts and lost connections).
    """

    max_attempts: int = 5
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    max_total_s: float = 300.0
    timeout_s: float = 60.0
    retry_statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        for label in ("base_delay_s", "max_delay_s", "max_total_s", "timeout_s"):
            if getattr(self, label) < 0:
                raise ValueError(f"{label} must be >= 0, got {getattr(self, label)}")

    def backoff_s(self, attempt: int, *, rng: Callable[[], float] = random.random) -> float:
        """Delay after failed attempt number ``attempt`` (1-based), with "equal jitter".

        Half of the exponential delay is fixed, half random, so clients that failed together
        spread out but none retries immediately.
        """
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return float(ceiling / 2 + rng() * ceiling / 2)


DEFAULT_RETRY = RetryPolicy()


def make_session(*, headers: Mapping[str, str] | None = None, bearer_token: str | None = None) -> requests.Session:
    """Return a ``requests.Session`` for catalogue calls.

    Retries are done by :func:`request_text`, not by urllib3, so the session mounts no retry
    adapter (two retry layers would multiply attempts).

    Args:
        headers: extra headers sent with every request.
        bearer_token: an access token (CDSE OData search needs none); never logged.

    Returns:
        A new session; the caller closes it.
    """
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    session.headers["Accept"] = "application/json"
    if headers:
        session.headers.update(headers)
    if bearer_token:
        session.headers["Authorization"] = f"Bearer {bearer_token}"
    return session


def retry_after_s(value: str | None, *, now: datetime | None = None) -> float | None:
    """Parse a ``Retry-After`` header: delta-seconds or an HTTP date; None if absent or unparseable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 7231 dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def error_message(response: requests.Response, *, limit: int = 300) -> str:
    """Return the message of an error answer: the JSON body's message if any, else its text."""
    text = response.text or ""
    try:
        body = json.loads(text)
    except ValueError:
        return text[:limit].strip() or response.reason or "no body"
    return _message_from(body, text)[:limit]


def _message_from(body: Any, text: str) -> str:
    if isinstance(body, dict):
        # OData: {"error": {"code", "message"}}; CDSE/FastAPI: {"detail": str | {"message"}};
        # STAC API: {"code", "description"}.
        for key in ("error", "detail", "message", "description"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, dict | list) and value:
                return _message_from(value, json.dumps(value))
    if isinstance(body, list) and body:
        return _message_from(body[0], text)
    return text


def request_text(
    session: requests.Session,
    url: str,
    *,
    method: str = "GET",
    params: Mapping[str, str | int] | None = None,
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
    policy: RetryPolicy = DEFAULT_RETRY,
    sleep: Sleep = time.sleep,
    rng: Callable[[], float] = random.random,
) -> str:
    """Send one request, retrying transient failures, and return the body as text.

    Args:
        session: the HTTP session (passed in so tests can point it anywhere).
        url: absolute URL.
        method: HTTP method; ``json_body`` is sent as JSON for POST.
        params: query parameters.
        json_body: JSON-serialisable request body.
        headers: extra headers for this request.
        policy: attempts, delays and timeouts.
        sleep: how to wait (tests inject a recorder instead of sleeping).
        rng: random source of the jitter, in [0, 1).

    Returns:
        The decoded body of the first 2xx answer.

    Raises:
        TransientError: timeouts, lost connections, 429 or retryable 5xx after the last allowed
            attempt or when the next wait would exceed ``policy.max_total_s``; names the URL and
            the last status.
        CatalogueResponseError: any other non-2xx answer; names the URL, status and message.
    """
    # Time spent = time inside requests + waits asked for; counting the waits rather than the
    # wall clock keeps the cap exact when tests inject a sleep that does not sleep.
    in_requests = 0.0
    waited = 0.0
    last = "no answer"
    for attempt in range(1, policy.max_attempts + 1):
        server_delay: float | None = None
        sent = time.monotonic()
        try:
            response = session.request(
                method, url, params=params, json=json_body, headers=headers, timeout=policy.timeout_s
            )
        except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as err:
            in_requests += time.monotonic() - sent
            last = f"{type(err).__name__}: {err}"
        else:
            in_requests += time.monotonic() - sent
            status = response.status_code
            if 200 <= status < 300:
                return response.text
            if status not in policy.retry_statuses:
                raise CatalogueResponseError(
                    f"{method} {response.url or url}: HTTP {status} {response.reason}: {error_message(response)}"
                )
            last = f"HTTP {status} {response.reason}"
            server_delay = retry_after_s(response.headers.get("Retry-After"))
        if attempt == policy.max_attempts:
            break
        delay = server_delay if server_delay is not None else policy.backoff_s(attempt, rng=rng)
        if in_requests + waited + delay > policy.max_total_s:
            last += f"; next wait {delay:.1f} s would exceed max_total_s={policy.max_total_s:g}"
            break
        log.warning("retrying method=%s url=%s attempt=%d last=%s wait_s=%.2f", method, url, attempt, last, delay)
        sleep(delay)
        waited += delay
    raise TransientError(
        f"{method} {url}: gave up after {attempt} attempt(s) in {in_requests + waited:.1f} s; last status: {last}"
    )


def request_json(
    session: requests.Session,
    url: str,
    *,
    method: str = "GET",
    params: Mapping[str, str | int] | None = None,
    json_body: Any = None,
    policy: RetryPolicy = DEFAULT_RETRY,
    sleep: Sleep = time.sleep,
    rng: Callable[[], float] = random.random,
) -> Any:
    """Like :func:`request_text`, and decode the body as JSON.

    Raises:
        CatalogueResponseError: the body is not JSON (names the URL and the parse error), or
            as in :func:`request_text`.
        TransientError: as in :func:`request_text`.
    """
    text = request_text(
        session, url, method=method, params=params, json_body=json_body, policy=policy, sleep=sleep, rng=rng
    )
    try:
        return json.loads(text)
    except ValueError as err:
        raise CatalogueResponseError(f"{method} {url}: answer is not JSON ({err}); starts {text[:80]!r}") from err
