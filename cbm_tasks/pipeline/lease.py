"""Hold a claimed product while a task works on it: a short lease, renewed by a heartbeat thread.

A claim (``registry.claim``) belongs to the run that made it. The task try that extracts the
product takes its lease (``registry.take_lease``) for about a minute and a thread renews it on
its own database connection while the extraction runs (Numba kernels release the GIL, so the
thread gets to run). A worker that dies (SIGKILL, a lost machine) stops renewing: the product
can be taken again as soon as the lease runs out, by the retry of the same task on another
worker (Airflow's task heartbeat timeout fails the dead try) or by another run's claim. See
ARCHITECTURE.md, "Claims and leases".
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType

import psycopg
from psycopg.conninfo import make_conninfo

from cbm_tasks import db, lineage
from cbm_tasks.catalogue import registry
from cbm_tasks.errors import CbmError, ConfigError, TransientError

__all__ = ["LeaseKeeper", "LeaseTerms", "lease_holder", "run_owner"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LeaseTerms:
    """How long a working task's lease lasts and how it is kept.

    Attributes:
        lease: the lease taken and each renewal: how long a dead worker's product stays taken.
        renew_every: the heartbeat; well under *lease*, so that two missed beats do not lose it.
        wait: how long a retry waits for the lease of an earlier try of its task to end or run out.
    """

    lease: timedelta = timedelta(seconds=60)
    renew_every: timedelta = timedelta(seconds=15)
    wait: timedelta = timedelta(seconds=90)

    @classmethod
    def of(cls, lease_seconds: float) -> LeaseTerms:
        """Terms of a lease of *lease_seconds*, renewed four times per lease, a retry waiting 1.5 leases."""
        if not lease_seconds >= 4:
            raise ConfigError(f"a claim lease must be at least 4 s, got {lease_seconds}")
        lease = timedelta(seconds=lease_seconds)
        return cls(lease=lease, renew_every=lease / 4, wait=lease * 1.5)

    def __post_init__(self) -> None:
        if not timedelta(0) < self.renew_every * 2 <= self.lease:
            raise ConfigError(f"lease renewal every {self.renew_every} must be > 0 and at most half the "
                              f"lease {self.lease}")


def run_owner(run: lineage.RunContext) -> str:
    """Return the claim owner of an Airflow run: ``<dag_id>/<run_id>``, as the claiming task records it."""
    if run.dag_id is None or run.run_id is None:
        raise ConfigError(f"a claimed product is worked on by an Airflow task; got run context {run}")
    return f"{run.dag_id}/{run.run_id}"


def lease_holder(run: lineage.RunContext) -> str:
    """Return who works on a product: this process (host, pid) and the Airflow task try."""
    return (f"{socket.gethostname()}:{os.getpid()} {run_owner(run)}/{run.task_id}"
            f"[{run.map_index}]#{run.try_number}")


class LeaseKeeper:
    """Context manager: take the lease of a claimed product on entry, renew it until exit.

    Args:
        conn: the task's connection (idle); the heartbeat opens one of its own to the same database.
        product_id, aoi: the claimed product.
        run: the task try.
        terms: lease, heartbeat and wait.

    Raises (on entry):
        ClaimLostError: the product is not this run's any more (see ``registry.take_lease``).
        TransientError: an earlier try of this task still held a live lease after ``terms.wait``.
    """

    def __init__(self, conn: psycopg.Connection, product_id: int, *, aoi: str, run: lineage.RunContext,
                 terms: LeaseTerms | None = None) -> None:
        self._conn = conn
        self.product_id = product_id
        self.aoi = aoi
        self.owner = run_owner(run)
        self.holder = lease_holder(run)
        self.terms = terms or LeaseTerms()
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lost(self) -> bool:
        """True once a renewal found the lease held by someone else (another try took the product over)."""
        return self._lost.is_set()

    def __enter__(self) -> LeaseKeeper:
        t0 = time.monotonic()
        while not registry.take_lease(self._conn, self.product_id, aoi=self.aoi, owner=self.owner,
                                      holder=self.holder, lease=self.terms.lease):
            if time.monotonic() - t0 > self.terms.wait.total_seconds():
                raise TransientError(f"product {self.product_id} (AOI {self.aoi!r}): an earlier try of "
                                     f"{self.owner} still holds its lease after {self.terms.wait}")
            time.sleep(min(5.0, self.terms.renew_every.total_seconds()))
        waited = time.monotonic() - t0
        log.info("leased product=%s aoi=%s holder=%s lease_s=%d waited_s=%.1f", self.product_id, self.aoi,
                 self.holder, self.terms.lease.total_seconds(), waited)
        dsn = self._conn.info.dsn
        if self._conn.info.password:
            dsn = make_conninfo(dsn, password=self._conn.info.password)
        self._thread = threading.Thread(target=self._beat, args=(dsn,), name=f"lease-{self.product_id}",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if error is not None and not self.lost:
            # this try stops on an error and will be retried: its retry needs not wait for the lease
            # to run out. A dead connection cannot give it back: then it runs out (ARCHITECTURE.md)
            try:
                registry.release_lease(self._conn, self.product_id, aoi=self.aoi, holder=self.holder)
            except (psycopg.Error, CbmError) as err:
                log.warning("could not give back the lease of product=%s aoi=%s: %s", self.product_id, self.aoi,
                            type(err).__name__)

    def _beat(self, dsn: str) -> None:
        """Renew the lease every ``renew_every`` until stopped; a failed renewal is tried again next beat."""
        every = self.terms.renew_every.total_seconds()
        conn: psycopg.Connection | None = None
        try:
            while not self._stop.wait(every):
                try:
                    if conn is None or conn.closed:
                        conn = db.connect(dsn, autocommit=True, application_name="cbm_lease",
                                          lock_timeout_s=every / 2, statement_timeout_s=every)
                    if not registry.renew_lease(conn, self.product_id, aoi=self.aoi, holder=self.holder,
                                                lease=self.terms.lease):
                        self._lost.set()
                        log.warning("lost the lease of product=%s aoi=%s holder=%s: another try took it over",
                                    self.product_id, self.aoi, self.holder)
                        return
                except (psycopg.Error, CbmError) as err:
                    # the lease has about two more beats to go: the next one may get through
                    log.warning("could not renew the lease of product=%s aoi=%s: %s", self.product_id, self.aoi,
                                type(err).__name__)
                    if conn is not None:
                        conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()
