"""Opening Redis connections; redis errors become ftqueue errors here."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode
from redis.retry import Retry
from redis.sentinel import Sentinel

from ..exceptions import CredentialsRefusedError, FtqueueConnectionError, InvalidAddressError
from ..settings import Settings
from .cluster import Client
from .errors import is_transient

SOCKET_TIMEOUT_S = 10.0   # above the 1 s BLPOP waits; bounds a call to a frozen Redis
CONNECT_TIMEOUT_S = 5.0
# A sentinel that does not answer within this is skipped for the next one.
SENTINEL_TIMEOUT_S = 1.0
SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
CLUSTER_SCHEME = "redis+cluster"
DEFAULT_REDIS_PORT = 6379


@dataclass(frozen=True)
class SentinelAddress:
    """`redis+sentinel://[:password@]host:port[,host:port…]/service_name[/db]`; the URL's
    password is the data nodes', `?sentinel_password=` the sentinels' own."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None


def parse_sentinel_address(address: str) -> SentinelAddress:
    """Raises ValueError saying what is wrong (never echoing the password)."""
    parts, username, password, sentinels = _split_hosts(
        address, SENTINEL_SCHEME, DEFAULT_SENTINEL_PORT, "a sentinel")
    segments = [s for s in parts.path.split("/") if s]
    if not segments or len(segments) > 2:
        raise ValueError("expected /service_name or /service_name/db after the sentinels")
    db = segments[1] if len(segments) == 2 else "0"
    if not db.isdigit():
        raise ValueError(f"the database must be a number, got {db!r}")
    query = dict(parse_qsl(parts.query))
    unknown = set(query) - {"sentinel_password"}
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return SentinelAddress(sentinels, unquote(segments[0]), int(db), username, password,
                           query.get("sentinel_password") or None)


@dataclass(frozen=True)
class ClusterAddress:
    """`redis+cluster://[user:password@]host:port[,host:port…]`: startup nodes, any of the
    cluster's nodes (the client learns the others from them)."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None


def parse_cluster_address(address: str) -> ClusterAddress:
    """Raises ValueError saying what is wrong (never echoing the password)."""
    parts, username, password, nodes = _split_hosts(address, CLUSTER_SCHEME,
                                                    DEFAULT_REDIS_PORT, "a cluster node")
    if parts.path.strip("/"):
        raise ValueError("a Redis Cluster has only database 0: nothing may follow the nodes")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if query:
        raise ValueError(f"unknown option(s): {', '.join(sorted(query))}")
    return ClusterAddress(nodes, username, password)


def _split_hosts(address: str, scheme: str, default_port: int, what: str,
                 ) -> tuple[SplitResult, str | None, str | None, tuple[tuple[str, int], ...]]:
    """`scheme://[user:password@]host:port[,host:port…]…`: the parsed address, the user,
    the password and the hosts."""
    parts = urlsplit(address)
    if parts.scheme != scheme:
        raise ValueError(f"not a {scheme}:// address")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    hosts = tuple(_host_port(item.strip(), default_port, what) for item in hostlist.split(","))
    return parts, unquote(username) or None, unquote(password) or None, hosts


def _host_port(item: str, default_port: int, what: str) -> tuple[str, int]:
    if item.startswith("["):                     # [::1]:26379
        host, _, rest = item[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = item.partition(":")
    if not host:
        raise ValueError(f"{what} without a host")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"not a port: {port!r}")
    return host, int(port) if port else default_port


def connect(address: str, *, check: bool = True,
            socket_timeout: float = SOCKET_TIMEOUT_S) -> Client:
    """A client for `address` (redis://, rediss://, unix://, redis+sentinel://,
    redis+cluster://) with redis-py's own command retries off: every ftqueue step is
    retried by ftqueue itself, only where that is safe. `socket_timeout` bounds one call to
    a frozen Redis. Through Sentinel, every new connection asks the sentinels for the
    primary, so a process follows a failover by reconnecting (its connections to the old
    primary fail, or answer READONLY, which redis-py turns into a lost connection). Through
    a cluster, redis-py follows MOVED, ASK and TRYAGAIN itself (the command did not run); a
    lost node or CLUSTERDOWN reloads its map of the slots and reaches ftqueue as a
    transient error."""
    options: dict[str, Any] = {
        "retry": Retry(NoBackoff(), 0), "socket_timeout": socket_timeout,
        "socket_connect_timeout": min(CONNECT_TIMEOUT_S, socket_timeout),
        "health_check_interval": 10,
    }
    client: Client
    try:
        if address.startswith(SENTINEL_SCHEME + "://"):
            client = _sentinel_client(parse_sentinel_address(address), options)
        elif address.startswith(CLUSTER_SCHEME + "://"):
            client = _cluster_client(parse_cluster_address(address), options)
        else:
            if address.startswith("rediss://"):
                options.update(tls_options(Settings.from_env()))
            client = redis.Redis.from_url(address, **options)
    except ValueError as e:
        raise InvalidAddressError(f"invalid Redis address {redact(address)}: {e}") from None
    except (redis.RedisError, redis.exceptions.RedisClusterException) as e:
        # redis-py's cluster client loads the map of the slots when it is made.
        if isinstance(e.__cause__, redis.AuthenticationError):
            raise CredentialsRefusedError(f"Redis at {redact(address)} refused the "
                                          f"credentials: {e.__cause__}") from None
        raise FtqueueConnectionError(f"cannot reach Redis at {redact(address)}: "
                                     f"{_one_line(e)}") from None
    if check:
        try:
            client.ping()
        except redis.AuthenticationError as e:
            raise CredentialsRefusedError(
                f"Redis at {redact(address)} refused the credentials: {e}") from None
        except (redis.RedisError, redis.exceptions.RedisClusterException) as e:
            client.close()
            raise FtqueueConnectionError(f"cannot reach Redis at {redact(address)}: "
                                         f"{_one_line(e)}") from None
    return client


def connect_patiently(address: str, within_s: float, **options: Any) -> Client:
    """`connect` for a process that must not die of a blip: its check (a PING whose reply
    can be lost like any other) is tried again while Redis is unreachable, up to
    `within_s`; credentials refused still fail at once."""
    return retry_across_outage(lambda: connect(address, **options),  # type: ignore[no-any-return]
                               deadline=time.monotonic() + within_s)


def tls_options(settings: Settings) -> dict[str, str]:
    """redis-py's TLS options from FTQUEUE_TLS_*: a CA bundle and, for mutual TLS, the
    client's certificate and key (hostname checking stays on, redis-py's default)."""
    tls = {"ssl_ca_certs": settings.tls_ca_file, "ssl_certfile": settings.tls_cert_file,
           "ssl_keyfile": settings.tls_key_file}
    return {k: v for k, v in tls.items() if v}


def _sentinel_client(parsed: SentinelAddress, options: dict[str, Any]) -> redis.Redis:
    sentinel_options = dict(options, socket_timeout=SENTINEL_TIMEOUT_S,
                            socket_connect_timeout=SENTINEL_TIMEOUT_S,
                            password=parsed.sentinel_password)
    sentinel_options.pop("health_check_interval")
    manager = Sentinel(list(parsed.sentinels),  # type: ignore[no-untyped-call]
                       sentinel_kwargs=sentinel_options)
    client: redis.Redis = manager.master_for(  # type: ignore[no-untyped-call]
        parsed.service, redis_class=redis.Redis, db=parsed.db, username=parsed.username,
        password=parsed.password, **options)
    return client


def _cluster_client(parsed: ClusterAddress, options: dict[str, Any]) -> redis.RedisCluster:
    nodes = [ClusterNode(host, port)  # type: ignore[no-untyped-call]
             for host, port in parsed.nodes]
    options = dict(options)
    retry = options.pop("retry")   # given apart: redis-py refuses it among the node options
    return redis.RedisCluster(startup_nodes=nodes, username=parsed.username,
                              password=parsed.password, retry=retry, **options)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] if text else type(e).__name__


RECONNECT_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def backoff(attempt: int) -> float:
    return RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S) - 1)]


def retry_across_outage(step: Callable[[], Any], give_up: Callable[[], bool] = lambda: False,
                        deadline: float | None = None) -> Any:
    """Run a step that is safe to repeat, retrying with backoff while Redis is unreachable
    or not serving (see errors.is_transient). Past `deadline` (time.monotonic()) or when
    `give_up()` says so, the last error is raised."""
    failures = 0
    while True:
        try:
            return step()
        except Exception as e:
            if not is_transient(e) or give_up():
                raise
            pause = backoff(failures)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                pause = min(pause, left)
            time.sleep(pause)
            failures += 1



def redact(address: str) -> str:
    """The address without its password (in the user part or the query), for messages."""
    try:
        parts = urlsplit(address)
    except ValueError:
        return "<unparsable address>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = urlencode([(k, "***" if k in ("password", "sentinel_password") else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
