-- The peer layout of benchmarks/storage_bench.py: one row per parcel, image and band, the
-- shape of the JRC cbm S2 signature tables (pid, obsid, band, then eight float4 statistics)
-- with the primary key that makes re-extraction idempotent. Benchmark scaffolding only: it is
-- created in a throw-away schema of a throw-away database, never by the application.
CREATE SCHEMA bench_peer;
CREATE TABLE bench_peer.signatures (
    pid   integer NOT NULL,
    obsid integer NOT NULL,
    band  char(3) NOT NULL,
    count real,
    mean  real,
    std   real,
    min   real,
    max   real,
    p25   real,
    p50   real,
    p75   real,
    PRIMARY KEY (pid, obsid, band)
);
