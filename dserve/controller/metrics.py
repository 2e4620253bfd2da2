"""The controller's metrics at the scheduler's ``/metrics``, read from its state at scrape time.

Per deployment: target and running replicas, status (one series per status, 1 for
the current one); per application: status; the control loop's count and duration;
checkpoint write time; autoscaling decisions. Nothing is recorded on the hot path:
the state objects are the source, as they are for ``serve.status()``.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..metrics import enabled, namespace, table
from ..schema import ApplicationStatus, DeploymentStatus

if TYPE_CHECKING:
    from .plugin import Controller

__all__ = ["ControllerMetrics"]


class ControllerMetrics:
    """A Prometheus collector over one controller (registered while it runs)."""

    def __init__(self, controller: "Controller") -> None:
        self.controller = controller
        self.loops = 0
        self.last_loop_s = 0.0
        self.registered = False
        self.checkpoint_ms = table("histogram", "serve_controller_checkpoint_write_ms",
                                   "Time to write the controller's checkpoint file (ms).", ())
        self.decisions = table("counter", "serve_autoscaling_decisions",
                               "Autoscaling decisions that changed a deployment's target.",
                               ("deployment", "application", "direction"))

    def register(self) -> None:
        if enabled() and not self.registered:
            REGISTRY.register(self)
            self.registered = True

    def unregister(self) -> None:
        if self.registered:
            REGISTRY.unregister(self)
            self.registered = False

    def loop_done(self, started: float) -> None:
        self.loops += 1
        self.last_loop_s = time.perf_counter() - started

    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterator[Any]:
        prefix = namespace() + "_" if namespace() else ""
        target = GaugeMetricFamily(prefix + "serve_autoscaling_target_replicas",
                                   "The number of replicas the controller aims for.", labels=["deployment", "application"])
        running = GaugeMetricFamily(prefix + "serve_deployment_running_replicas",
                                    "Replicas of the deployment that are RUNNING.", labels=["deployment", "application"])
        dep_status = GaugeMetricFamily(prefix + "serve_deployment_status",
                                       "1 for the deployment's current status.",
                                       labels=["deployment", "application", "status"])
        app_status = GaugeMetricFamily(prefix + "serve_application_status", "1 for the application's current status.",
                                       labels=["application", "status"])
        for name, app in list(self.controller.store.apps.items()):
            current = app.status
            for status in ApplicationStatus:
                app_status.add_metric([name, status.value], 1.0 if status == current else 0.0)
            for dep in list(app.deployments.values()):
                target.add_metric([dep.name, name], float(dep.target))
                running.add_metric([dep.name, name], float(len(dep.running())))
                for status in DeploymentStatus:
                    dep_status.add_metric([dep.name, name, status.value], 1.0 if status == dep.status else 0.0)
        loops = CounterMetricFamily(prefix + "serve_controller_num_control_loops",
                                    "Control loops the controller has run.")
        loops.add_metric([], float(self.loops))
        duration = GaugeMetricFamily(prefix + "serve_controller_control_loop_duration_s",
                                     "Duration of the last control loop (s).")
        duration.add_metric([], self.last_loop_s)
        yield from (target, running, dep_status, app_status, loops, duration)
