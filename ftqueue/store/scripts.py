"""The Lua scripts as Redis runs them: a generated prelude, lib.lua's helpers, the script.

Each script's header is its contract (as in bullmq): a `-- KEYS[i] <name>` line for every
key it can name in advance, where <name> is a `Keys` member (`leases`), or a `Keys` method
and the argument it is built from (`node_tasks(node_id)`); then lines for the keys that
depend on how many records a call carries, its ARGV and its return value. The loader reads
the fixed `KEYS` lines, so the header is also what the store passes: it cannot drift from
the code. The prelude binds those keys by name (`K.leases`), and defines `k_<name>(id)` for
every per-id key of keys.py, for the keys a script only finds at run time (the dependents
of a finished task, the children in a recursive cancel...). Constants shared with Python
come from settings.py and from here, never mirrored by hand. A script carries only the
prelude and lib.lua statements it names, directly or through each other (`shake`): Redis
runs every top-level statement, a closure per helper, on each call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

from .. import partitions, settings
from .. import resources as amounts
from ..keys import DEFAULT_SHAPE, PER_ID, SINGLE, Keys

# The served clock (docs/design.md): a gap longer than this between two scripts that advance
# it counts as this much. Above the ≤ 1 s renew interval of a live node.
SERVED_GAP_MAX_MS = 1000
STATS_MINUTE_TTL_S = 3600
MINUTE_MS = 60_000
# Index entries (workers, nodes) are dropped this long after their record expired.
FORGET_AFTER_MS = 3600 * 1000
FORGET_BATCH = 100
BELL_MAX = 1000
RECONSTRUCT_DEPTH_MAX = 100
# Due DELAYED tasks a claim or sweep moves to a queue per call (a claim that leaves more due
# reports "due now", so its worker claims again at once).
PROMOTE_BATCH = 100
# Limited tasks one claim may hold back before it stops (and rings for the next claim).
HOLD_MAX = 100

LUA_CONSTANTS: dict[str, int] = {
    "NOTIFY_TTL_S": settings.DEFAULT_NOTIFY_TTL_S,
    "MESSAGE_MAX": settings.ATTEMPT_MESSAGE_MAX_CHARS,
    "INLINE_RESULT_MAX": settings.INLINE_RESULT_MAX_BYTES,
    "SERVED_GAP_MAX_MS": SERVED_GAP_MAX_MS,
    "DEAD_NODE_TTL_S": settings.DEAD_NODE_TTL_S,
    "STATS_MINUTE_TTL_S": STATS_MINUTE_TTL_S,
    "MINUTE_MS": MINUTE_MS,
    "FORGET_AFTER_MS": FORGET_AFTER_MS,
    "FORGET_BATCH": FORGET_BATCH,
    "BELL_MAX": BELL_MAX,
    "RECONSTRUCT_DEPTH_MAX": RECONSTRUCT_DEPTH_MAX,
    "PROMOTE_BATCH": PROMOTE_BATCH,
    "HOLD_MAX": HOLD_MAX,
    "MIRROR_TTL_S": settings.DEFAULT_LINEAGE_TTL_S,
}

LUA_STRINGS: dict[str, str] = {
    "DEFAULT_SHAPE": DEFAULT_SHAPE,
    "NO_DEMAND": amounts.NO_DEMAND,
    "BLOCKED_FLAG": amounts.BLOCKED_FLAG,
    "MIRROR_PENDING": partitions.MIRROR_PENDING,
}
LUA_CONSTANTS["UNIT"] = amounts.UNIT

_KEY_LINE = re.compile(r"^-- KEYS\[(\d+)\] ([a-z_]+)(?:\(([a-z_]+)\))?(?:\s|$)")
# What may appear inside a generated Lua string literal: key segments are plain words.
_SEGMENT = re.compile(r"[a-z_:]+")


@dataclass(frozen=True)
class FixedKey:
    """One `-- KEYS[i] name` or `-- KEYS[i] name(param)` line of a script's header."""

    name: str
    param: str = ""

    def build(self, keys: Keys, params: Mapping[str, str]) -> str:
        if self.param:
            return str(getattr(keys, self.name)(params[self.param]))
        return str(getattr(keys, self.name))


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    fixed_keys: tuple[FixedKey, ...]

    def keys(self, keys: Keys, params: Mapping[str, str], extra: Sequence[str] = ()) -> list[str]:
        """KEYS for one call: the header's fixed keys, then the per-record ones."""
        return [k.build(keys, params) for k in self.fixed_keys] + list(extra)


def parse_fixed_keys(name: str, text: str) -> tuple[FixedKey, ...]:
    """The fixed KEYS a script's header declares, checked against keys.py."""
    found: list[FixedKey] = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        match = _KEY_LINE.match(line)
        if match is None:
            continue
        index, key_name, param = int(match[1]), match[2], match[3] or ""
        if index != len(found) + 1:
            raise ValueError(f"{name}.lua: KEYS[{index}] out of order")
        if (key_name in SINGLE) == bool(param) or key_name not in SINGLE.keys() | PER_ID.keys():
            raise ValueError(f"{name}.lua: KEYS[{index}] {line[3:]!r} is not a Keys member")
        if any(k.name == key_name for k in found):
            raise ValueError(f"{name}.lua: KEYS[{index}] declares {key_name} twice")
        found.append(FixedKey(key_name, param))
    return tuple(found)


def _lua_string(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_=.,]+", value):
        raise ValueError(f"not a plain Lua string constant: {value!r}")
    return f"'{value}'"


def _lua_literal(segment: str) -> str:
    if not _SEGMENT.fullmatch(segment):
        raise ValueError(f"not a key segment: {segment!r}")
    return f"'{segment}'"


# Keys of which a namespace (a partition) has one that helpers reach without the script
# naming them in its header: `ks_<name>()`.
RUNTIME_SINGLE = ("outbox",)


def key_functions() -> str:
    """`k_<name>(id)` for every per-id key of keys.py (P is the namespace, ARGV[1]), and
    `ks_<name>()` for the keys of RUNTIME_SINGLE."""
    return "\n".join(
        [f"local function k_{name}(id) return P .. {_lua_literal(':' + segment + ':')} .. id end"
         for name, segment in PER_ID.items()]
        + [f"local function ks_{name}() return P .. {_lua_literal(':' + SINGLE[name])} end"
           for name in RUNTIME_SINGLE])


def prelude(fixed_keys: Sequence[FixedKey]) -> str:
    bindings = ", ".join(f"{k.name} = KEYS[{i}]" for i, k in enumerate(fixed_keys, 1))
    constants = "\n".join(
        [f"local {name} = {int(value)}" for name, value in LUA_CONSTANTS.items()]
        + [f"local {name} = {_lua_string(value)}" for name, value in LUA_STRINGS.items()])
    return "\n".join([
        "-- Generated by ftqueue/store/scripts.py from keys.py, settings.py and the header",
        "-- of the script below.",
        "local P = ARGV[1]",
        f"local K = {{{bindings}}}",
        f"local NK = {len(fixed_keys)}",
        constants,
        key_functions(),
    ])


_DEFINES = re.compile(r"^(?:local )?(?:function )?(\w+(?:, *\w+)*)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COMMENT = re.compile(r"--.*$", re.MULTILINE)


def top_level_chunks(text: str) -> list[tuple[set[str], str]]:
    """Top-level statements of generated prelude + lib.lua text, each with the locals it
    defines. A statement starts at a column-0 line that is not a comment, `end` or `}`
    (lines that close it); comments and blank lines go with the statement before them."""
    chunks: list[tuple[set[str], list[str]]] = [(set(), [])]
    for line in text.splitlines():
        starts = (line[:1] not in ("", " ", "\t") and not line.startswith("--")
                  and line.split(" ")[0] not in ("end", "}", "})"))
        # `function f(...)` gives its body to a `local f` declared above it (a helper that
        # a helper defined before it calls): a statement of its own, defining f.
        if starts and line.startswith(("local ", "function ")):
            match = _DEFINES.match(line)
            names = {n.strip() for n in match[1].split(",")} if match else set()
            chunks.append((names, [line]))
        else:
            # A top-level statement that defines nothing (`if not NOW then`) stays with the
            # one before it, so it is kept whenever that one is.
            chunks[-1][1].append(line)
    return [(names, "\n".join(lines)) for names, lines in chunks]


def shake(library: str, script: str) -> str:
    """Only the statements of `library` that `script` needs, directly or through each other,
    in their order: every helper defined on each call costs Redis time (a closure each)."""
    chunks = top_level_chunks(library)
    needed: set[str] = set()
    todo = [script]
    while todo:
        for name in _NAME.findall(_COMMENT.sub("", todo.pop())):
            if name in needed:
                continue
            needed.add(name)
            todo += [body for names, body in chunks if name in names]
    return "\n".join(body for names, body in chunks if not names or names & needed)


def load_scripts() -> dict[str, Script]:
    lua = resources.files(__package__).joinpath("lua")
    lib = lua.joinpath("lib.lua").read_text()
    scripts = {}
    for path in lua.iterdir():
        if not path.name.endswith(".lua") or path.name == "lib.lua":
            continue
        name, text = path.name[:-4], path.read_text()
        fixed = parse_fixed_keys(name, text)
        library = shake("\n".join([prelude(fixed), lib]), text)
        scripts[name] = Script(name, "\n".join([library, text]), fixed)
    return scripts
