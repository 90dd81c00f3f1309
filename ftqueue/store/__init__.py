"""The only package that imports redis: connections and one typed wrapper per Lua script."""

from .connection import connect, is_connection_error
from .store import Claimed, Store

__all__ = ["Claimed", "Store", "connect", "is_connection_error"]
