-- Claim leases (issue 13): a claim holds until lease_until, not for a fixed time after claimed_at.
--
-- A claim (cbm_tasks.catalogue.registry.claim) gets a lease as long as the old stale-claim time
-- (it may wait in the run's queue). The task that extracts the product takes the lease for itself
-- (leased_by: host, pid and Airflow task try) and shortens it to about a minute, renewed by a
-- heartbeat thread while it works. A killed worker stops renewing: its product can be taken again
-- within a minute, by the retry of the same task on another worker or by another run's claim.
ALTER TABLE cbm.product_status
    ADD COLUMN lease_until timestamptz,          -- the claim holds until then (NULL: not claimed)
    ADD COLUMN leased_by   text;                 -- the task try working on it, while one does

-- claims open at the upgrade keep the time they had under the old rule (2 hours after claimed_at)
UPDATE cbm.product_status SET lease_until = claimed_at + interval '2 hours'
WHERE claimed_at IS NOT NULL AND status IN ('extracting', 'processing');
