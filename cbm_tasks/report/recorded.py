"""What a stored marker run recorded, back as the objects that compute: parameters and rules.

``cbm.marker_run.params`` holds :meth:`MarkerParams.as_dict` (``{"version": v, section: {key:
value}}``) and ``cbm.scheme_rules.content`` the rules file as applied; both are rebuilt here and
their hashes checked against the recorded ones, so a recomputation uses exactly what the run did.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg

from cbm_tasks.errors import BadInputError, NotFoundError
from cbm_tasks.markers.params import MarkerParams, default_params
from cbm_tasks.traffic_light.rules import SchemeRules, load_rules

__all__ = ["recorded_params", "recorded_rules"]


def recorded_params(record: Mapping[str, Any], *, expected_hash: str | None = None) -> MarkerParams:
    """Return the parameters of a marker run's ``params`` record (the defaults when it holds none).

    Raises:
        BadInputError: an unknown section, a version that is not an integer, or a hash that differs
            from *expected_hash* (the record was changed after the run).
    """
    sections = {name: dict(values) for name, values in record.items() if isinstance(values, Mapping)}
    defaults = default_params()
    if not sections:
        params = defaults
    else:
        unknown = sorted(set(sections) - set(defaults.sections))
        if unknown:
            raise BadInputError(f"marker run parameters: unknown sections {unknown}; known: "
                                f"{sorted(defaults.sections)}")
        version = record.get("version", defaults.version)
        if not isinstance(version, int):
            raise BadInputError(f"marker run parameters: version must be an integer, got {version!r}")
        params = MarkerParams(version, sections, "marker_run")
    if expected_hash is not None and params.hash != expected_hash:
        raise BadInputError(f"marker run parameters hash {params.hash[:12]} differs from the recorded "
                            f"{expected_hash[:12]}: the stored parameters were changed after the run")
    return params


def recorded_rules(conn: psycopg.Connection, rules_hash: str) -> SchemeRules:
    """Return the scheme rules stored under *rules_hash* (``cbm.scheme_rules``), validated as a rules file.

    Raises:
        NotFoundError: no rules stored under that hash.
        BadInputError: the stored content no longer has that hash.
    """
    row = conn.execute("SELECT content FROM cbm.scheme_rules WHERE rules_hash = %s", (rules_hash,)).fetchone()
    if row is None:
        raise NotFoundError(f"scheme rules {rules_hash[:12]} are not stored (cbm.scheme_rules)")
    with tempfile.TemporaryDirectory(prefix="cbm-rules-") as folder:
        path = Path(folder) / "scheme_rules.yaml"  # JSON is YAML: the rules file loader validates it
        path.write_text(json.dumps(row[0]))
        rules = load_rules(path)
    if rules.hash != rules_hash:
        raise BadInputError(f"stored scheme rules {rules_hash[:12]} now hash to {rules.hash[:12]}")
    return rules
