"""Signed download links: what to cut, for how long, under the database's key (``cbm.api_link_mac``).

JRC's raw-chip queries answer relative URLs that the client downloads without credentials
(``requests.get(api_url + chip)`` in JRC's notebooks). The API checks the user's grant when it
writes a link; the link itself is a capability: ``<payload>.<mac>``, the payload a compact JSON
object with an expiry, the MAC HMAC-SHA256 of the payload under a key that never leaves the
database (sql/021_api_link_key.sql). Changing one character of the link, or using it after its
expiry, gets 404; nothing in it is secret, so it may be logged.

Both parts are lower-case hex, not base64: JRC's own scripts make a chip's other band by editing
the whole URL (``url.replace('VV', 'VH')``, ``url.replace('B08.tif', 'B04.tif')``), and a token
in hex holds no capital letter that such an edit could change.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from cbm_tasks.errors import NotFoundError

__all__ = ["LINK_TTL_S", "MAX_TOKEN", "open_link", "rotate_key", "sign_links"]

LINK_TTL_S = 24 * 3600  # a day: JRC's service flushes its chip cache every night
_DOMAIN = b"cbm chip link v1\n"  # the MAC covers this prefix too: a MAC made for another use never verifies
MAX_TOKEN = 2048  # a Sentinel-1 coherence chip names two scenes: ~900 characters
_HEX = re.compile(r"^[0-9a-f]+\.[0-9a-f]{64}$")


def _macs(conn: psycopg.Connection, messages: Sequence[bytes]) -> list[bytes]:
    rows = conn.execute("SELECT cbm.api_link_mac(m) FROM unnest(%s::bytea[]) WITH ORDINALITY AS t(m, i) ORDER BY i",
                        ([_DOMAIN + m for m in messages],)).fetchall()
    return [bytes(r[0]) for r in rows]


def sign_links(conn: psycopg.Connection, payloads: Sequence[Mapping[str, Any]], *,
               ttl_s: int = LINK_TTL_S, now: float | None = None) -> list[str]:
    """Return one token ``<payload>.<mac>`` per payload (JSON-able mappings), valid for *ttl_s* seconds."""
    expires = int((time.time() if now is None else now) + ttl_s)
    bodies = [json.dumps({**p, "exp": expires}, separators=(",", ":"), sort_keys=True).encode() for p in payloads]
    return [f"{body.hex()}.{mac.hex()}" for body, mac in zip(bodies, _macs(conn, bodies), strict=True)]


def open_link(conn: psycopg.Connection, token: str, *, now: float | None = None) -> dict[str, Any]:
    """Return the payload of *token* when its MAC is right and it has not expired.

    Raises:
        NotFoundError: malformed, altered or expired (one answer for all: a prober learns nothing).
    """
    gone = NotFoundError("no such chip: the link is malformed, altered or expired; ask the query again")
    if len(token) > MAX_TOKEN or not _HEX.match(token):
        raise gone
    body_text, mac_text = token.split(".")
    try:
        body, mac = bytes.fromhex(body_text), bytes.fromhex(mac_text)
    except ValueError:  # an odd number of digits
        raise gone from None
    if not hmac.compare_digest(_macs(conn, [body])[0], mac):
        raise gone
    payload = json.loads(body)
    if not isinstance(payload, dict) or not isinstance(payload.get("exp"), int):
        raise gone
    if payload["exp"] < (time.time() if now is None else now):
        raise gone
    return payload


def rotate_key(conn: psycopg.Connection) -> None:
    """Replace the link key with 32 new random bytes: every link handed out before answers 404 from now on.

    Needs the schema owner's connection (cbm_reader cannot touch the key); commits.
    """
    conn.execute("UPDATE cbm.api_link_key SET key = %s, created_at = now()", (secrets.token_bytes(32),))
    conn.commit()
