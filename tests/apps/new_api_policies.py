"""Custom autoscaling policies for tests/test_new_apis.py, named by import path.

The controller imports them on the scheduler, which for the embedded cluster is the
test process: ``SEEN`` lets a test read what a policy was given.
"""
import math

SEEN = {}  # deployment name -> the last AutoscalingContext a policy saw


def two_and_a_half(ctx):
    """A float target: dserve rounds it up, as Ray Serve does."""
    return 2.5, {}


class FixedCount:
    """A class-based policy: built once with policy_kwargs, called every tick."""

    instances = 0

    def __init__(self, count):
        FixedCount.instances += 1
        self.count = count

    def __call__(self, ctx):
        return self.count, {}


def by_backlog(ctx):
    """One replica per 10 units of the largest backlog a replica reports."""
    SEEN[ctx.deployment_name] = ctx
    backlog = ctx.aggregated_metrics.get("backlog")
    if not backlog:
        return ctx.target_num_replicas
    return math.ceil(max(backlog.values()) / 10)
