"""Traffic lights per parcel and aid scheme from marker events and versioned scheme rules."""

from cbm_tasks.traffic_light.evaluate import COLOURS, REASONS, TrafficLight, describe, evaluate_lights
from cbm_tasks.traffic_light.rules import Rule, RulesFileError, Scheme, SchemeRules, load_rules

__all__ = ["COLOURS", "REASONS", "Rule", "RulesFileError", "Scheme", "SchemeRules", "TrafficLight", "describe",
           "evaluate_lights", "load_rules"]
