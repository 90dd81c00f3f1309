"""The only package that imports redis: connections and one typed wrapper per Lua script."""

from .connection import backoff, connect, is_connection_error, redact, retry_across_outage
from .errors import ReplicaWaitTimeout, describe, is_corrupt, is_full, is_transient, is_unreachable
from .store import Claimed, Store

__all__ = ["Claimed", "ReplicaWaitTimeout", "Store", "backoff", "connect", "describe",
           "is_connection_error", "is_corrupt", "is_full", "is_transient", "is_unreachable",
           "redact", "retry_across_outage"]
