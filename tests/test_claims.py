"""Claims as the README states them: SKIP LOCKED across processes, the cap, attempts and stale time."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.product import Product
from cbm_tasks.errors import ConfigError
from cbm_tasks.pipeline.extract import MAX_CLAIM, claim_ready

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
README_TEXT = " ".join(README.split())  # line breaks as spaces

# Claim in a transaction the process keeps open, as a worker mid-claim would; print the ids.
_CLAIMER = textwrap.dedent("""
    import sys, time
    from cbm_tasks import db
    from cbm_tasks.catalogue import registry
    url, worker, hold = sys.argv[1], sys.argv[2], sys.argv[3] == "hold"
    # lock_timeout 5 s: a claim that blocked on the other's rows fails instead of passing late
    with db.connect(url, lock_timeout_s=5) as conn:
        conn.execute("SELECT 1")  # opens the transaction the claim runs in (a savepoint of it)
        ids = registry.claim(conn, aoi="demo", worker=worker, limit=3)
        print(" ".join(map(str, ids)), flush=True)
        if hold:
            time.sleep(600)
""")


def _products(n: int, prefix: str = "p") -> list[Product]:
    t0 = datetime(2018, 4, 1, 10, 50, tzinfo=UTC)
    return [Product(uid=f"{prefix}{i}", name=f"{prefix}{i}", catalogue="local", collection="SENTINEL-2",
                    product_type="S2MSI2A", acquired_at=t0 + timedelta(hours=i), location=f"/data/{prefix}{i}")
            for i in range(n)]


def test_skip_locked_claimers_in_separate_processes_do_not_wait(conn: psycopg.Connection, db_url: str) -> None:
    ids = registry.register(conn, _products(8), aoi="demo")
    conn.commit()
    holder = subprocess.Popen([sys.executable, "-c", _CLAIMER, db_url, "a", "hold"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None
        first = [int(i) for i in holder.stdout.readline().split()]
        assert first == ids[:3]  # the oldest three, still uncommitted
        second = subprocess.run([sys.executable, "-c", _CLAIMER, db_url, "b", "commit"], capture_output=True,
                                text=True, timeout=120, check=False)
        assert second.returncode == 0, second.stderr  # a blocking FOR UPDATE would hit lock_timeout here
        assert [int(i) for i in second.stdout.split()] == ids[3:6]  # the next three, not the held ones
        assert holder.poll() is None  # the first claimer really still held its rows meanwhile
    finally:
        holder.kill()
        holder.wait(timeout=10)
    # the holder never committed: its three are ready again, the second claimer's are extracting
    rows = conn.execute("SELECT product_id, status, claimed_by FROM cbm.product_status ORDER BY 1").fetchall()
    assert rows == ([(i, "ready", None) for i in ids[:3]] + [(i, "extracting", "b") for i in ids[3:6]]
                    + [(i, "ready", None) for i in ids[6:]])


def test_claim_cap_is_the_readme_s(conn: psycopg.Connection) -> None:
    assert f"at most {MAX_CLAIM} per run" in README_TEXT
    with conn.transaction():
        registry.register(conn, _products(MAX_CLAIM + 5), aoi="demo")
    assert len(claim_ready(conn, aois=["demo"], worker="run1")) == MAX_CLAIM
    assert len(claim_ready(conn, aois=["demo"], worker="run2")) == 5


def test_attempts_before_failed_are_the_readme_s(conn: psycopg.Connection) -> None:
    attempts = int(re.search(r"`failed` after (\d+) attempts", README_TEXT).group(1))  # type: ignore[union-attr]
    (pid,) = registry.register(conn, _products(1), aoi="demo")
    statuses = []
    for attempt in range(1, attempts + 1):
        assert registry.claim(conn, aoi="demo", worker="w") == [pid]
        statuses.append(registry.mark_failed(conn, pid, aoi="demo", error=f"try {attempt}"))  # the default limit
    assert statuses == ["ready"] * (attempts - 1) + ["failed"]


def test_stale_claim_time_is_the_readme_s(conn: psycopg.Connection) -> None:
    hours = int(re.search(r"claimed but not started is held for (\d+) hours", README_TEXT).group(1))  # type: ignore[union-attr]
    (pid,) = registry.register(conn, _products(1), aoi="demo")
    assert registry.claim(conn, aoi="demo", worker="dead") == [pid]
    lease = conn.execute("SELECT lease_until - claimed_at FROM cbm.product_status").fetchone()[0]
    assert lease == timedelta(hours=hours)  # the default claim lease
    conn.execute("UPDATE cbm.product_status SET lease_until = now() + interval '1 minute'")
    conn.commit()
    assert registry.claim(conn, aoi="demo", worker="w2") == []  # a minute short: still the dead worker's
    conn.execute("UPDATE cbm.product_status SET lease_until = now() - interval '1 minute'")
    conn.commit()
    assert registry.claim(conn, aoi="demo", worker="w2") == [pid]


@pytest.mark.parametrize("limit", [0, -1])
def test_claim_limit_below_one_is_refused(conn: psycopg.Connection, limit: int) -> None:
    with pytest.raises(ConfigError, match=f"limit must be >= 1 or None, got {limit}"):
        claim_ready(conn, aois=["demo"], worker="w", limit=limit)
