"""Stored values as the pages show them: neutral types, rendered to escaped HTML, compared.

The adapter (:mod:`cairn.ui.source`) turns a record's payload into plain Python
values (text, numbers, lists, dicts, UUIDs, datetimes, ...) and the few types
below for what it does not build: a value object, entity or enum is an
:class:`Obj` (its class named, never imported), a tuple or set a :class:`Seq`,
a dict with keys that are not all text :class:`Pairs`. Every piece of text
goes through :func:`markupsafe.escape`: stored values may hold HTML or script.
Rendering is bounded in depth, items and characters, so a hostile record
cannot make a page without bound.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

from markupsafe import Markup

MAX_DEPTH = 12  # deeper values are shown as compact text
MAX_ITEMS = 200  # items of one list or dict shown
MAX_CHARS = 2000  # characters of one text shown
MAX_BYTES = 64  # bytes of a bytes value shown (in hex)
MAX_DIFF_ROWS = 2000


@dataclass(frozen=True)
class Obj:
    """A value object, child entity or enum member, shown by its class's topic and fields."""

    kind: str  # "value object", "entity" or "enum"
    topic: str
    fields: Any


@dataclass(frozen=True)
class Seq:
    """A tuple, set or frozenset (its items kept as stored: they may not be hashable here)."""

    kind: str
    items: list[Any]


@dataclass(frozen=True)
class Pairs:
    """A dict whose keys are not all text."""

    items: list[tuple[Any, Any]]


@dataclass(frozen=True)
class Malformed:
    """A value the page cannot interpret, with why, and its stored text (cut short)."""

    reason: str
    raw: str


# --------------------------------------------------------------------------- text


def text(value: Any, limit: int = MAX_CHARS) -> str:
    """A one-line text form of a value (for diffs, titles and compact views), cut at ``limit``."""
    out = _text(value, 0)
    return out if len(out) <= limit else out[:limit] + f"… ({len(out) - limit:,} more characters)"


def _text(value: Any, depth: int) -> str:
    if depth > MAX_DEPTH:
        return "…"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bytes):
        more = "…" if len(value) > MAX_BYTES else ""
        return f"bytes[{len(value)}] {value[:MAX_BYTES].hex()}{more}"
    if isinstance(value, list):
        return "[" + ", ".join(_text(v, depth + 1) for v in value[:MAX_ITEMS]) + "]"
    if isinstance(value, dict):
        inner = ", ".join(
            f"{_text(k, depth + 1)}: {_text(v, depth + 1)}"
            for k, v in list(value.items())[:MAX_ITEMS]
        )
        return "{" + inner + "}"
    if isinstance(value, Seq):
        return f"{value.kind}(" + ", ".join(_text(v, depth + 1) for v in value.items) + ")"
    if isinstance(value, Pairs):
        return (
            "{" + ", ".join(f"{_text(k, depth)}: {_text(v, depth)}" for k, v in value.items) + "}"
        )
    if isinstance(value, Obj):
        return f"{short_topic(value.topic)}({_text(value.fields, depth + 1)})"
    if isinstance(value, Malformed):
        return f"<unreadable: {value.reason}>"
    if isinstance(value, dt.datetime | dt.date | dt.time | dt.timedelta | Decimal | UUID):
        return str(value)
    return repr(value)


def short_topic(topic: str) -> str:
    """A class's name from its topic (``module:Outer.Inner`` gives ``Outer.Inner``)."""
    return topic.rpartition(":")[2] or topic


# --------------------------------------------------------------------------- HTML


def render(value: Any) -> Markup:
    """The value as escaped HTML (lists and dicts as nested lists and tables)."""
    return Markup("").join(_html(value, 0))


def _html(value: Any, depth: int) -> Iterator[Markup | str]:
    if depth > MAX_DEPTH:
        yield Markup('<span class="v-deep">{}</span>').format(text(value, 200))
    elif value is None or isinstance(value, bool):
        yield Markup('<span class="v-const">{}</span>').format(repr(value))
    elif isinstance(value, int | float | Decimal):
        yield Markup('<span class="v-num">{}</span>').format(value)
    elif isinstance(value, str):
        yield _html_str(value)
    elif isinstance(value, UUID):
        yield Markup('<a class="v-id" href="/aggregates/{0}">{0}</a>').format(value)
    elif isinstance(value, dt.datetime | dt.date | dt.time | dt.timedelta):
        yield Markup('<span class="v-time">{}</span>').format(value)
    elif isinstance(value, bytes):
        yield Markup('<span class="v-bytes">{}</span>').format(text(value))
    elif isinstance(value, list | Seq):
        yield from _html_list(value, depth)
    elif isinstance(value, dict | Pairs):
        yield from _html_table(value, depth)
    elif isinstance(value, Obj):
        yield Markup('<div class="v-obj"><span class="v-class" title="{} {}">{}</span>').format(
            value.kind, value.topic, short_topic(value.topic)
        )
        yield from _html(value.fields, depth + 1)
        yield Markup("</div>")
    elif isinstance(value, Malformed):
        yield Markup('<span class="v-bad" title="{}">unreadable: {}</span>').format(
            value.raw, value.reason
        )
    else:
        yield Markup('<span class="v-other">{}</span>').format(text(value))


def _html_str(value: str) -> Markup:
    shown = value[:MAX_CHARS]
    more = len(value) - len(shown)
    note = Markup('<span class="v-more">… {:,} more characters</span>').format(more) if more else ""
    return Markup('<span class="v-str">{}</span>{}').format(shown, note)


def _html_list(value: list[Any] | Seq, depth: int) -> Iterator[Markup | str]:
    items = value.items if isinstance(value, Seq) else value
    kind = value.kind if isinstance(value, Seq) else "list"
    if not items:
        yield Markup('<span class="v-const">{}</span>').format(
            "[]" if kind == "list" else f"{kind}()"
        )
        return
    yield Markup('<ol class="v-list" data-kind="{}" start="0">').format(kind)
    for item in items[:MAX_ITEMS]:
        yield Markup("<li>")
        yield from _html(item, depth + 1)
        yield Markup("</li>")
    if len(items) > MAX_ITEMS:
        yield Markup('<li class="v-more">… {:,} more items</li>').format(len(items) - MAX_ITEMS)
    yield Markup("</ol>")


def _html_table(value: dict[Any, Any] | Pairs, depth: int) -> Iterator[Markup | str]:
    items = value.items if isinstance(value, Pairs) else list(value.items())
    if not items:
        yield Markup('<span class="v-const">{}</span>').format("{}")
        return
    yield Markup('<table class="v-dict">')
    for key, item in items[:MAX_ITEMS]:
        yield Markup("<tr><th>{}</th><td>").format(key if isinstance(key, str) else text(key, 200))
        yield from _html(item, depth + 1)
        yield Markup("</td></tr>")
    if len(items) > MAX_ITEMS:
        yield Markup('<tr><td colspan="2" class="v-more">… {:,} more entries</td></tr>').format(
            len(items) - MAX_ITEMS
        )
    yield Markup("</table>")


# --------------------------------------------------------------------------- differences


@dataclass(frozen=True)
class Change:
    """One path whose value differs between two states."""

    path: str
    kind: str  # "added", "removed" or "changed"
    before: str | None
    after: str | None


def flatten(value: Any, path: str = "", depth: int = 0) -> Iterator[tuple[str, str]]:
    """(path, text) of every leaf of a value: dict entries by key, list items by index."""
    if depth > MAX_DEPTH:
        yield path or "(state)", text(value, 200)
    elif isinstance(value, dict) and value:
        for key, item in value.items():
            name = key if isinstance(key, str) else text(key, 80)
            yield from flatten(item, f"{path}.{name}" if path else name, depth + 1)
    elif isinstance(value, Pairs) and value.items:
        for key, item in value.items:
            yield from flatten(item, f"{path}[{text(key, 80)}]", depth + 1)
    elif isinstance(value, list | Seq) and (value.items if isinstance(value, Seq) else value):
        items = value.items if isinstance(value, Seq) else value
        for n, item in enumerate(items):
            yield from flatten(item, f"{path}[{n}]", depth + 1)
    elif isinstance(value, Obj):
        yield from flatten(value.fields, f"{path}<{short_topic(value.topic)}>", depth + 1)
    else:
        yield path or "(state)", text(value, 500)


def diff(before: Any, after: Any) -> list[Change]:
    """What changed from ``before`` to ``after``, path by path, in the order the paths appear."""
    old, new = dict(flatten(before)), dict(flatten(after))
    changes = []
    for path in dict.fromkeys([*old, *new]):
        if path not in new:
            changes.append(Change(path, "removed", old[path], None))
        elif path not in old:
            changes.append(Change(path, "added", None, new[path]))
        elif old[path] != new[path]:
            changes.append(Change(path, "changed", old[path], new[path]))
        if len(changes) >= MAX_DIFF_ROWS:
            break
    return changes
