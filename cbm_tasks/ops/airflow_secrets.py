"""The local Airflow deployment's secrets: generated once, kept in files only their owner can read.

``secrets.json`` (fernet key, JWT and API secrets, the Redis password) and ``passwords.json`` (the
simple auth manager's users) under ``AIRFLOW_HOME``, mode 0600; :mod:`.airflow_config` writes them
into ``airflow.cfg`` and the Redis configuration. No Airflow import here (STYLE R1).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

__all__ = ["ADMIN_USER", "admin_password", "broker_password", "deployment_secrets", "write_private"]

ADMIN_USER = "admin"


class Deployment(Protocol):
    """Where a deployment keeps its secrets (``airflow_config.AirflowConfig`` is one)."""

    @property
    def home(self) -> Path: ...

    @property
    def passwords_file(self) -> Path: ...


def write_private(path: Path, text: str) -> None:
    """Write *text* to *path*, readable by the owner only (the file holds secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)


def deployment_secrets(cfg: Deployment) -> dict[str, str]:
    """Return the deployment's secrets, generating them on first use.

    The fernet key must never change once connections or variables are stored encrypted in
    the metadata database, so a stored secret is only read; a secret added by a later version
    (the Redis password) is generated and stored beside the others once.
    """
    path = cfg.home / "secrets.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    makers: dict[str, Callable[[], str]] = {
        "fernet_key": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "jwt_secret": lambda: secrets.token_urlsafe(32),
        "api_secret_key": lambda: secrets.token_urlsafe(32),
        "redis_password": lambda: secrets.token_urlsafe(24),
    }
    missing = {name: make() for name, make in makers.items() if name not in stored}
    if missing:
        stored.update(missing)
        write_private(path, json.dumps(stored, indent=1) + "\n")
    return stored


def admin_password(cfg: Deployment) -> str:
    """Return the UI password of user ``admin``, generating it on first use."""
    if cfg.passwords_file.exists():
        passwords: dict[str, str] = json.loads(cfg.passwords_file.read_text() or "{}")
        if ADMIN_USER in passwords:
            return passwords[ADMIN_USER]
    else:
        passwords = {}
    passwords[ADMIN_USER] = secrets.token_urlsafe(12)
    write_private(cfg.passwords_file, json.dumps(passwords) + "\n")
    return passwords[ADMIN_USER]


def broker_password(cfg: Deployment) -> str:
    """Return the Celery broker's (Redis) password, generating it on first use."""
    return deployment_secrets(cfg)["redis_password"]
