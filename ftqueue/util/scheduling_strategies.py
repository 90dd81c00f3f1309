"""As `ray.util.scheduling_strategies`: pass one as `scheduling_strategy=`."""

from ..spec import NodeAffinitySchedulingStrategy

__all__ = ["NodeAffinitySchedulingStrategy"]
