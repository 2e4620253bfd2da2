"""The scaling decision: Ray Serve's default policy, or a custom one.

Default: desired = aggregated load over the look-back window /
``target_ongoing_requests``, moved from the current target by the up- or
down-scaling factor, rounded up, clamped to [min, max]. A change is applied
only after it has been wanted continuously for ``upscale_delay_s`` (up) or
``downscale_delay_s`` (down; ``downscale_to_zero_delay_s`` for the last
replica). From zero, any waiting request scales to one at once.
A custom policy (callable or import path) gets an ``AutoscalingContext`` and
returns the desired count (or ``(count, state)``); its decisions apply at once
(it owns its timing, keeping what it needs in ``policy_state``).
"""
from __future__ import annotations

import importlib
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

from ..config import AutoscalingConfig

__all__ = ["AutoscalingContext", "Autoscaler", "default_desired", "load_policy"]


@dataclass
class AutoscalingContext:
    """What a policy decides from (names follow Ray Serve's context)."""

    config: AutoscalingConfig
    deployment_name: str
    app_name: str
    current_num_replicas: int
    target_num_replicas: int
    running_replicas: int
    total_running_requests: float
    total_queued_requests: float
    total_num_requests: float
    capacity_adjusted_min_replicas: int
    capacity_adjusted_max_replicas: int
    policy_state: Dict[str, Any] = field(default_factory=dict)
    last_scale_up_time: Optional[float] = None
    last_scale_down_time: Optional[float] = None


def _aggregate(values: list, how: str) -> float:
    if not values:
        return 0.0
    if how == "max":
        return max(values)
    if how == "min":
        return min(values)
    return statistics.fmean(values)


def default_desired(config: AutoscalingConfig, current: int, load: float) -> int:
    """Ray's default desired replica count for an aggregated load."""
    raw = load / config.target_ongoing_requests
    if current == 0:
        desired = math.ceil(raw)
    else:
        if raw > current:
            factor = config.upscaling_factor or config.upscale_smoothing_factor or config.smoothing_factor
        else:
            factor = config.downscaling_factor or config.downscale_smoothing_factor or config.smoothing_factor
        desired = math.ceil(current + factor * (raw - current))
    return max(config.min_replicas, min(config.max_replicas, desired))


def load_policy(policy: Any) -> Callable[..., Any]:
    """The policy callable itself, or the one an import path (``module:attr``) names."""
    if callable(policy):
        return policy
    module, _, attr = str(policy).replace(":", ".").rpartition(".")
    return getattr(importlib.import_module(module), attr)


class Autoscaler:
    """Turns load samples into target replica counts for one deployment."""

    def __init__(self) -> None:
        self.wanted: Optional[int] = None
        self.wanted_since = 0.0
        self.last_decision = ""
        self.last_decision_at: Optional[float] = None
        self.policy_state: Dict[str, Any] = {}
        self.last_up: Optional[float] = None  # time.time() of the last scale-up decision
        self.last_down: Optional[float] = None  # ... and of the last scale-down decision

    def decide(self, config: AutoscalingConfig, current: int, running: int, samples: list,
               running_requests: int, queued_requests: int, names: Tuple[str, str]) -> Tuple[int, str]:
        """The new target (maybe unchanged) and why."""
        now = time.monotonic()
        load = _aggregate([v for _, v in samples], config.aggregation_function)
        if current == 0 and queued_requests > 0:  # immediate 0 -> 1 path
            target = max(1, config.min_replicas, min(config.max_replicas, default_desired(config, 0, queued_requests)))
            return self._decided(now, target, f"{queued_requests} request(s) waiting with no replicas", current)
        if config.policy is not None:
            context = AutoscalingContext(
                config, names[1], names[0], running, current, running, running_requests, queued_requests,
                running_requests + queued_requests, config.min_replicas, config.max_replicas,
                self.policy_state, self.last_up, self.last_down,
            )
            result = load_policy(config.policy)(context)
            if isinstance(result, tuple):
                result, self.policy_state = result[0], dict(result[1] or {})
            desired = max(config.min_replicas, min(config.max_replicas, int(result)))
            if desired == current:
                return current, ""
            # a custom policy owns its timing (it can keep state in policy_state)
            return self._decided(now, desired, f"custom policy chose {desired} (was {current})", current)
        desired = default_desired(config, current, load)
        if desired == current:
            self.wanted = None
            return current, ""
        if desired != self.wanted:
            self.wanted, self.wanted_since = desired, now
        if desired > current:
            delay = config.upscale_delay_s
        elif desired == 0:
            delay = config.downscale_to_zero_delay_s if config.downscale_to_zero_delay_s is not None else config.downscale_delay_s
        else:
            delay = config.downscale_delay_s
        if now - self.wanted_since < delay:
            return current, ""
        direction = "up" if desired > current else "down"
        return self._decided(now, desired, f"scaled {direction} from {current} to {desired}: average load "
                                           f"{load:.2f} over the look-back window, target_ongoing_requests="
                                           f"{config.target_ongoing_requests:g}", current)

    def _decided(self, now: float, target: int, why: str, current: int) -> Tuple[int, str]:
        self.wanted = None
        self.last_decision, self.last_decision_at = why, time.time()
        if target > current:
            self.last_up = self.last_decision_at
        elif target < current:
            self.last_down = self.last_decision_at
        return target, why
