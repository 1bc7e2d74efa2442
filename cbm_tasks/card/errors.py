"""Errors of CARD production, in the library's one hierarchy (``cbm_tasks.errors``).

Bad input (never retried): an incomplete or corrupt SAFE, a DEM that does not cover the
output, an on-demand order the service rejects, SNAP not installed. Transient or unknown
failures (a ``gpt`` crash, a timeout) stay ``SnapError``/``TransientError`` and are retried.
"""

from __future__ import annotations

from cbm_tasks.errors import BadInputError, ConfigError, CorruptProductError, SnapError

__all__ = [
    "DemCoverageError",
    "IncompleteSafeError",
    "OrderRejectedError",
    "SnapNotInstalledError",
]


class IncompleteSafeError(CorruptProductError):
    """A SAFE misses a file its manifest lists (measurement, annotation, calibration, noise)."""


class DemCoverageError(BadInputError):
    """The DEM has no height for part of the output grid."""


class OrderRejectedError(BadInputError):
    """The on-demand production service refused or failed an order for a reason a retry cannot fix."""


class SnapNotInstalledError(SnapError, ConfigError):
    """ESA SNAP ``gpt`` is not where the deployment says it is."""
