"""Failed logins: 5 wrong secrets of one user from one address in 5 minutes, then 429 with Retry-After."""

from __future__ import annotations

import logging

import pytest
from api_world import World
from fastapi.testclient import TestClient

from cbm_tasks.api.app import create_app
from cbm_tasks.api.context import ApiConfig
from cbm_tasks.api.login_limit import LoginLimiter, TooManyLoginsError
from cbm_tasks.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_sixth_attempt_within_the_window_is_refused_until_the_oldest_failure_expires(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limiter = LoginLimiter(max_failures=5, window_s=300, clock=clock)
    with caplog.at_level(logging.WARNING, logger="cbm_tasks.api.login_limit"):
        for _ in range(5):
            limiter.check("ann", "10.0.0.1")  # allowed: fewer than 5 failures so far
            limiter.failed("ann", "10.0.0.1")
            clock.now += 10  # failures at 1000, 1010, ..., 1040
    assert [r.getMessage() for r in caplog.records] == [
        "api login refused user=ann client=10.0.0.1 failures=5 window_s=300"]
    with pytest.raises(TooManyLoginsError, match="user 'ann'") as info:
        limiter.check("ann", "10.0.0.1")  # at 1050: the oldest failure (1000) leaves the window at 1300
    assert info.value.retry_after_s == 250
    limiter.check("ann", "10.0.0.2")  # the same name from elsewhere: a guesser cannot lock ann out
    limiter.check("bob", "10.0.0.1")  # another name from the same address
    clock.now = 1299.5
    with pytest.raises(TooManyLoginsError) as info:
        limiter.check("ann", "10.0.0.1")
    assert info.value.retry_after_s == 1  # never 0: Retry-After: 0 would invite a hot loop
    clock.now = 1300.0  # the oldest failure has left the window: 4 remain, one more try
    limiter.check("ann", "10.0.0.1")
    limiter.failed("ann", "10.0.0.1")
    with pytest.raises(TooManyLoginsError) as info:
        limiter.check("ann", "10.0.0.1")
    assert info.value.retry_after_s == 10  # until 1310, when the failure of 1010 expires


def test_a_success_clears_the_count_and_memory_stays_bounded() -> None:
    clock = Clock()
    limiter = LoginLimiter(max_failures=2, window_s=60, max_entries=3, clock=clock)
    limiter.failed("ann", "a")
    limiter.succeeded("ann", "a")
    limiter.failed("ann", "a")
    limiter.check("ann", "a")  # one failure since the success
    for name in ("u1", "u2", "u3"):  # a spray of names pushes the least recently failed pair out
        limiter.failed(name, "a")
    limiter.failed("ann", "a")
    limiter.check("ann", "a")  # forgotten: only one failure counted
    assert "pairs=3" in repr(limiter)
    limiter.failed("ann", "a")
    with pytest.raises(TooManyLoginsError):
        limiter.check("ann", "a")
    with pytest.raises(ValueError, match="max_failures"):
        LoginLimiter(max_failures=0)
    with pytest.raises(ConfigError, match="login_max_failures"):
        ApiConfig(dsn="", login_max_failures=0)


def test_the_api_answers_429_with_retry_after_after_five_wrong_secrets(api_world: World) -> None:
    app = create_app(ApiConfig(dsn=api_world.db_url))
    url = "/v1/aois"
    with TestClient(app, client=("192.0.2.7", 4000)) as guesser, TestClient(app, client=("192.0.2.8", 4000)) as other:
        assert guesser.get(url, auth=("ann", "wrong-1")).status_code == 401
        assert guesser.get(url, auth=api_world.basic("ann")).status_code == 200  # the right secret clears the count
        for attempt in range(5):
            response = guesser.get(url, auth=("ann", f"wrong-{attempt}"))
            assert response.status_code == 401, attempt
        for auth in (("ann", "wrong-6"), api_world.basic("ann")):  # locked: not even the right secret is checked
            response = guesser.get(url, auth=auth)
            assert response.status_code == 429
            assert response.json() == {"error": "too many requests", "detail": response.json()["detail"]}
            assert "user 'ann'" in response.json()["detail"]
            assert 290 <= int(response.headers["retry-after"]) <= 300
        bearer = guesser.get(url, headers=api_world.bearer("ann"))
        assert bearer.status_code == 429  # the same user, whatever the scheme
        assert guesser.get(url, auth=api_world.basic("bob")).status_code == 200  # another user from that address
        assert other.get(url, auth=api_world.basic("ann")).status_code == 200  # ann from another address
        assert guesser.get("/health").status_code == 200  # no credential, no limit
