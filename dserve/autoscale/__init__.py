"""Request-based autoscaling: load metrics and the scaling policy."""
from .metrics import LoadMetrics
from .policy import AutoscalingContext, Autoscaler

__all__ = ["LoadMetrics", "Autoscaler", "AutoscalingContext"]
