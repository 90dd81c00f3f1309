"""Where Ray users look: `ftqueue.util.state` and `ftqueue.util.scheduling_strategies`."""

from . import scheduling_strategies, state

__all__ = ["scheduling_strategies", "state"]
