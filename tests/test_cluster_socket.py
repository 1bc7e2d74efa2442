"""The project-local cluster listens on its Unix socket only, as the README says."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import psycopg
import pytest

from cbm_tasks.ops import cluster


def _listening_tcp_ports() -> set[int]:
    """Ports with a listening TCP socket on this machine (IPv4 and IPv6), from /proc/net."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_cluster_opens_no_tcp_port(pg_cluster: cluster.ClusterConfig) -> None:
    with psycopg.connect(pg_cluster.url("postgres")) as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('listen_addresses', 'port', "
            "'unix_socket_directories')").fetchall())
        assert conn.info.host == str(pg_cluster.socket_dir)  # reached through the socket
    assert settings["listen_addresses"] == ""
    assert settings["unix_socket_directories"] == str(pg_cluster.socket_dir)
    assert pg_cluster.port not in _listening_tcp_ports()
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            probe = socket.socket(family)
        except OSError:  # no IPv6 on this machine: nothing can listen there either
            continue
        with probe, pytest.raises(ConnectionRefusedError):
            probe.settimeout(2)
            probe.connect((host, pg_cluster.port))
    sock = pg_cluster.socket_dir / f".s.PGSQL.{pg_cluster.port}"
    assert stat.S_ISSOCK(sock.stat().st_mode)
    # the socket directory is private to the server (root and the postgres user reach it)
    assert pg_cluster.socket_dir.stat().st_mode & 0o007 == 0
