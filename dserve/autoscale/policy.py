"""The scaling decision: Ray Serve's default policy, or a custom one.

Default: desired = aggregated load over the look-back window /
``target_ongoing_requests``, moved from the current target by the up- or
down-scaling factor, rounded up, clamped to [min, max]. A change is applied
only after it has been wanted continuously for ``upscale_delay_s`` (up) or
``downscale_delay_s`` (down; ``downscale_to_zero_delay_s`` for the last
replica). From zero, any waiting request scales to one at once.
A custom policy (callable, import path, or ``AutoscalingPolicy``: a function, or a
class instantiated once with ``policy_kwargs``) gets an ``AutoscalingContext`` and
returns the desired count (a float is rounded up), or ``(count, state)``; its
decisions apply at once (it owns its timing, keeping what it needs in
``policy_state``). The context carries the replicas' custom metrics
(``record_autoscaling_stats``): ``raw_metrics`` and their time-weighted means,
``aggregated_metrics``.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..autoscaling_policy import AutoscalingContext, TimeStampedValue, resolve_policy
from ..config import AutoscalingConfig

__all__ = ["AutoscalingContext", "Autoscaler", "custom_metrics", "default_desired", "load_policy"]

Samples = Dict[str, List[Tuple[float, Dict[str, float]]]]  # replica id -> [(time.time(), {name: value})]


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
    """What the policy setting names, ready to call (a class instantiated: keep the result)."""
    return resolve_policy(policy)


def _time_weighted(series: List[TimeStampedValue], now: float) -> float:
    """Each value holds from its time to the next sample's (the last one's until now)."""
    if len(series) == 1:
        return series[0].value
    ends = [s.timestamp for s in series[1:]] + [max(now, series[-1].timestamp)]
    weights = [end - s.timestamp for s, end in zip(series, ends)]
    total = sum(weights)
    if total <= 0:
        return statistics.fmean(s.value for s in series)
    return sum(s.value * w for s, w in zip(series, weights)) / total


def custom_metrics(samples: Samples, now: float) -> Tuple[Dict[str, Dict[str, List[TimeStampedValue]]], Dict[str, Dict[str, float]]]:
    """``(raw_metrics, aggregated_metrics)`` as the context holds them: by metric name, then replica id."""
    raw: Dict[str, Dict[str, List[TimeStampedValue]]] = {}
    for rid, series in samples.items():
        for t, values in series:
            for name, value in values.items():
                raw.setdefault(name, {}).setdefault(rid, []).append(TimeStampedValue(t, value))
    aggregated = {name: {rid: _time_weighted(vs, now) for rid, vs in per.items()} for name, per in raw.items()}
    return raw, aggregated


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
        self._policy: Any = None  # the configured policy setting, and the callable made from it
        self._policy_fn: Optional[Callable[..., Any]] = None

    def _callable(self, policy: Any) -> Callable[..., Any]:
        if self._policy_fn is None or self._policy is not policy:  # a class: one instance per setting
            self._policy_fn, self._policy = load_policy(policy), policy
        return self._policy_fn

    def decide(self, config: AutoscalingConfig, current: int, running: List[str], samples: list,
               running_requests: int, queued_requests: int, names: Tuple[str, str],
               custom: Optional[Samples] = None) -> Tuple[int, str]:
        """The new target (maybe unchanged) and why."""
        now = time.monotonic()
        load = _aggregate([v for _, v in samples], config.aggregation_function)
        if current == 0 and queued_requests > 0:  # immediate 0 -> 1 path
            target = max(1, config.min_replicas, min(config.max_replicas, default_desired(config, 0, queued_requests)))
            return self._decided(now, target, f"{queued_requests} request(s) waiting with no replicas", current)
        if config.policy is not None:
            raw, aggregated = custom_metrics(custom or {}, time.time())
            context = AutoscalingContext(
                config, names[1], names[0], len(running), current, list(running), running_requests,
                queued_requests, running_requests + queued_requests, config.min_replicas, config.max_replicas,
                self.policy_state, self.last_up, self.last_down, time.time(), raw, aggregated,
            )
            result = self._callable(config.policy)(context)
            if isinstance(result, tuple):
                result, self.policy_state = result[0], dict(result[1] or {})
            desired = max(config.min_replicas, min(config.max_replicas, math.ceil(result)))
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
