"""How the `ftqueue` command shows things to people: Ray's layout for lists, a compact task
table, ISO times and durations, and the machine formats (JSON/YAML keep Ray's fields)."""

from __future__ import annotations

import datetime
import json
from typing import Any, Sequence

# The default task table, for people: Ray's other columns (actor_id, type, a second copy of
# the name) are in --format json/yaml and --detail.
COMPACT_TASK_COLUMNS = ("task_id", "attempt_number", "name", "state", "error_type", "node_id",
                        "job_id")
DETAIL_TASK_COLUMNS = COMPACT_TASK_COLUMNS + ("queue", "start_time", "duration_s",
                                              "error_message")
HEADERS = {"attempt_number": "ATTEMPT"}
MESSAGE_CELL_MAX = 60


def now() -> str:
    return datetime.datetime.now().isoformat(sep=" ", timespec="seconds")


def iso(epoch_s: float | None) -> str:
    if epoch_s is None:
        return ""
    return datetime.datetime.fromtimestamp(epoch_s).isoformat(sep=" ", timespec="milliseconds")


def for_people(row: dict[str, Any]) -> dict[str, Any]:
    """A task row with readable times: ISO start/end/creation and the attempt's duration."""
    out = dict(row)
    start, end = row.get("start_time"), row.get("end_time")
    for key in ("creation_time", "start_time", "end_time"):
        if key in out:
            out[key] = iso(out[key])
    if "start_time" in row:
        out["duration_s"] = round(end - start, 3) if start and end else None
    for key, value in row.items():
        if isinstance(value, dict):       # resource amounts
            out[key] = amounts_text(value)
    return out


def amount(name: str, value: float) -> str:
    """One resource amount for people: memory as a size (16G), the rest as a number."""
    return size(value) if name == "memory" else f"{value:g}"


def amounts_text(amounts: dict[str, Any]) -> str:
    """Resource amounts for people: `CPU=2 GPU=1 memory=16G`."""
    return " ".join(f"{k}={amount(k, v)}" for k, v in amounts.items())


def size(n: float) -> str:
    """Bytes for people: 512M, 15.6G."""
    for unit, scale in (("T", 1024 ** 4), ("G", 1024 ** 3), ("M", 1024 ** 2), ("K", 1024)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(int(n))


def render_data(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2)
    import yaml

    return str(yaml.safe_dump(data, sort_keys=False)).rstrip("\n")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> list[str]:
    def cell(row: dict[str, Any], column: str) -> str:
        value = row.get(column)
        text = "" if value is None else str(value).replace("\n", " ")
        return text if len(text) <= MESSAGE_CELL_MAX else text[:MESSAGE_CELL_MAX - 1] + "…"

    cells = [[cell(r, c) for c in columns] for r in rows]
    heads = [HEADERS.get(c, c.upper()) for c in columns]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(heads)]
    index_width = len(str(len(rows) - 1))
    lines = [" " * (index_width + 2) + "  ".join(h.ljust(w) for h, w in zip(heads, widths))
             .rstrip()]
    for n, row in enumerate(cells):
        lines.append(f"{str(n).rjust(index_width)}  " + "  ".join(
            v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return lines


def render(rows: list[dict[str, Any]], fmt: str, title: str, *,
           columns: Sequence[str] | None = None, cut: str = "") -> str:
    """Ray's list layout (`Stats: Total: N`, then the table) or JSON/YAML. `cut` says how
    the list was cut short, if it was."""
    if fmt != "table":
        return render_data(rows, fmt)
    lines = [f"======== {title} ========", "Stats:", "-" * 30, f"Total: {len(rows)}"]
    if cut:
        lines.append(cut)
    lines += ["", "Table:", "-" * 30]
    if rows:
        lines += table([for_people(r) for r in rows], columns or list(rows[0]))
    return "\n".join(lines)


def cut_note(shown: int, total: int, what: str) -> str:
    """'' when nothing was left out, else a line saying so (and how to see more)."""
    return f"showing {shown} of {total:,} {what} (use --limit)" if total > shown else ""
