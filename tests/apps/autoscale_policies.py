"""Custom autoscaling policies, named by import path in ``autoscaling_config={"policy": ...}``.

The controller imports them on the scheduler: for the embedded cluster that is
the test process itself, so this directory only needs to be on its sys.path.
"""


def three_replicas(ctx):
    """Whatever the load: three replicas."""
    return 3
