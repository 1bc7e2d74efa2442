"""Failed logins per user name and client address: after too many, the API answers 429 for a while.

Each wrong secret costs the server a full scrypt check (~50 ms of CPU, ``auth``) and gives a
guesser one try. :class:`LoginLimiter` counts the failed checks of each (user name, client
address) pair in a sliding window; once ``max_failures`` lie in the window, further attempts of
that pair are refused with 429 and ``Retry-After`` before any credential check (a right guess is
not confirmed either) until the oldest failure leaves the window. A successful login clears the
pair's count. Another client address, or another name from the same address, is not affected,
so a guesser cannot lock a user out from elsewhere.

The counts live in memory, in one process: right for one API server process (``cbm api
serve``, or the Airflow api-server with one worker). A deployment with several API processes or
hosts needs a shared store for the counts, or the reverse proxy's rate limit in front (for
example nginx ``limit_req`` on the API location); each process here limits only what it sees.
Behind a proxy the client address is the proxy's (``cbm api serve`` does not trust forwarded
headers, which any client could set): the count is then per user name over every client of that
proxy, and a guesser there can hold a user off for the window; limit in the proxy as well.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from cbm_tasks.errors import CbmError

__all__ = ["LoginLimiter", "TooManyLoginsError"]

log = logging.getLogger(__name__)


class TooManyLoginsError(CbmError):
    """Too many failed logins of one user name from one client address (HTTP 429).

    Attributes:
        retry_after_s: whole seconds until the next attempt is accepted.
    """

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class LoginLimiter:
    """Failed login attempts per (user name, client address) in a sliding window (thread-safe).

    Args:
        max_failures: failures within *window_s* after which the pair is refused.
        window_s: the window, seconds; a failure older than this no longer counts.
        max_entries: pairs remembered at most; past it the least recently failed pairs are
            forgotten first (a spray of names cannot grow memory without bound).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, *, max_failures: int = 5, window_s: float = 300.0, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_failures < 1 or window_s <= 0 or max_entries < 1:
            raise ValueError(f"max_failures and max_entries must be >= 1 and window_s > 0, "
                             f"got {max_failures}, {max_entries}, {window_s}")
        self._max_failures = max_failures
        self._window_s = window_s
        self._max_entries = max_entries
        self._clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}  # oldest-failed pair first
        self._lock = threading.Lock()

    def check(self, name: str, client: str) -> None:
        """Refuse an attempt of *name* from *client* while too many of its recent attempts failed.

        Raises:
            TooManyLoginsError: ``max_failures`` failures lie within the window; ``retry_after_s``
                says when the oldest of them leaves it.
        """
        with self._lock:
            times = self._recent((name, client))
            if times is None or len(times) < self._max_failures:
                return
            wait_s = times[0] + self._window_s - self._clock()
        retry_after_s = max(1, int(wait_s + 0.999))
        raise TooManyLoginsError(f"too many failed logins for user {name!r} from this address; "
                                 f"try again in {retry_after_s} s", retry_after_s=retry_after_s)

    def failed(self, name: str, client: str) -> None:
        """Count a failed attempt (unknown user or wrong secret) of *name* from *client*."""
        key = (name, client)
        with self._lock:
            times = self._recent(key) or deque()
            times.append(self._clock())
            self._failures.pop(key, None)
            self._failures[key] = times  # to the end: the most recently failed pair
            while len(self._failures) > self._max_entries:
                del self._failures[next(iter(self._failures))]
            n_failures = len(times)
        if n_failures == self._max_failures:
            log.warning("api login refused user=%s client=%s failures=%d window_s=%.0f",
                        name, client, n_failures, self._window_s)

    def succeeded(self, name: str, client: str) -> None:
        """Forget the failures of *name* from *client* (the right secret was presented)."""
        with self._lock:
            self._failures.pop((name, client), None)

    def clear(self) -> None:
        """Forget every count (tests)."""
        with self._lock:
            self._failures.clear()

    def _recent(self, key: tuple[str, str]) -> deque[float] | None:
        # the pair's failure times inside the window, expired ones dropped; the caller holds the lock
        times = self._failures.get(key)
        if times is None:
            return None
        horizon = self._clock() - self._window_s
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def __repr__(self) -> str:
        return (f"LoginLimiter(max_failures={self._max_failures}, window_s={self._window_s}, "
                f"pairs={len(self._failures)})")
