"""The only package that imports redis: connections and one typed wrapper per Lua script."""

from .connection import backoff, connect, is_connection_error, redact, retry_across_outage
from .store import Claimed, Store

__all__ = ["Claimed", "Store", "backoff", "connect", "is_connection_error", "redact",
           "retry_across_outage"]
