"""The only package that imports redis: connections and one typed wrapper per Lua script."""

from .cluster import Client, connection_pools, is_cluster
from .connection import backoff, connect, connect_patiently, redact, retry_across_outage
from .errors import ReplicaWaitTimeout, describe, is_corrupt, is_full, is_transient, is_unreachable
from .store import Claimed, Store, as_text

__all__ = ["Claimed", "Client", "ReplicaWaitTimeout", "Store", "as_text", "backoff", "connect",
           "connect_patiently",
           "connection_pools", "describe", "is_cluster",
           "is_corrupt", "is_full", "is_transient", "is_unreachable",
           "redact", "retry_across_outage"]
