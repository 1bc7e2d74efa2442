"""Traffic lights per parcel and aid scheme from marker events and versioned scheme rules."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cbm_tasks.lazy import lazy_names

if TYPE_CHECKING:
    from cbm_tasks.traffic_light.evaluate import COLOURS, REASONS, TrafficLight, describe, evaluate_lights
    from cbm_tasks.traffic_light.rules import Rule, RulesFileError, Scheme, SchemeRules, load_rules

__all__ = ["COLOURS", "REASONS", "Rule", "RulesFileError", "Scheme", "SchemeRules", "TrafficLight", "describe",
           "evaluate_lights", "load_rules"]

# the public names load their modules when first used: ``rules`` (YAML) without ``evaluate`` (Numba)
_LAZY = {
    "COLOURS": "cbm_tasks.traffic_light.evaluate",
    "REASONS": "cbm_tasks.traffic_light.evaluate",
    "TrafficLight": "cbm_tasks.traffic_light.evaluate",
    "describe": "cbm_tasks.traffic_light.evaluate",
    "evaluate_lights": "cbm_tasks.traffic_light.evaluate",
    "Rule": "cbm_tasks.traffic_light.rules",
    "RulesFileError": "cbm_tasks.traffic_light.rules",
    "Scheme": "cbm_tasks.traffic_light.rules",
    "SchemeRules": "cbm_tasks.traffic_light.rules",
    "load_rules": "cbm_tasks.traffic_light.rules",
}


__getattr__ = lazy_names(__name__, _LAZY)
