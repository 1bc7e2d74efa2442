"""Pick the CARD backend a deployment is configured for (kept apart from the interface it implements)."""

from __future__ import annotations

from cbm_tasks.card.backend import BackendConfig, CardBackend
from cbm_tasks.errors import ConfigError

__all__ = ["open_backend"]


def open_backend(cfg: BackendConfig) -> CardBackend:
    """Return the backend *cfg* names (its heavy imports happen only when it is used).

    Raises:
        ConfigError: the backend runs asynchronously (``cdse-odp`` goes through its own operator).
    """
    if cfg.backend == "sarsen":
        from cbm_tasks.card.sarsen_backend import SarsenBackend

        return SarsenBackend(cfg)
    if cfg.backend == "snap":
        from cbm_tasks.card.snap import SnapBackend

        return SnapBackend(cfg)
    raise ConfigError(f"CARD backend {cfg.backend!r} does not run inside a worker task; "
                      "the DAG submits its orders with a deferrable operator")
