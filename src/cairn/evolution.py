"""Schema evolution: what a class declares about the forms its stored data took.

A class of the model (an event class; an aggregate class, for its snapshots'
state; a child entity; a value object) may declare, in its own body:

- ``schema_version = N``: the version of the form it writes now (1 when it
  declares none). Stored data carries its version as ``"#v"`` beside its
  fields when it is above 1; data without one was written at version 1.
- ``upcast_vK_vL`` (``L = K + 1``): a static or class method, one step of the
  chain, that takes the fields of version K (a dict of decoded values: value
  objects and entities inside are already in their current form) and returns
  those of version L. A record is read by running the steps from its stored
  version to the class's, then checking that what they made is exactly the
  class's fields: nothing is dropped or filled in silently.
- ``former_topics = ("old.module:Old.Name", ...)``: the topics it was stored
  under before a rename or a move (:class:`cairn.model.Model` resolves them).

Each is read from the class's own namespace, never inherited: a subclass
starts at version 1, with no steps and no former topics of its own. Nothing is
imported and no class is built here; a declaration that does not make sense
(a step that skips a version, a version that is no whole number) is refused
when the class is first read or written, naming it.
"""

from __future__ import annotations

import dataclasses
import re
import traceback
from collections.abc import Callable, Collection
from typing import Any

from cairn.domain import class_namespace
from cairn.errors import NoUpcastStep, SchemaMismatch

VERSION_KEY = "#v"  # a stored form's schema version, beside its fields (never an identifier)
Step = Callable[[dict[str, Any]], dict[str, Any]]
_STEP = re.compile(r"upcast_v([0-9]{1,6})_v([0-9]{1,6})")
_TOPIC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_DECLARED = ("schema_version", "former_topics")


def _refused(owner: type, reason: str) -> SchemaMismatch:
    name = owner.__qualname__
    return SchemaMismatch(f"{name}: {reason}", type_name=name, reason=f"{name}: {reason}")


def own_version(owner: type) -> int:
    """The schema version a class declares in its own body (1 if none); refused if it is
    not a whole number of at least 1."""
    version = class_namespace(owner).get("schema_version", 1)
    if type(version) is not int or version < 1:
        raise _refused(owner, "schema_version must be a whole number of at least 1")
    return version


def former_topics(owner: type) -> tuple[str, ...]:
    """The topics a class declares it was stored under before (its own ``former_topics``)."""
    declared = class_namespace(owner).get("former_topics", ())
    if isinstance(declared, str) or not isinstance(declared, tuple | list):
        raise _refused(owner, "former_topics must be a tuple of topics ('module:Class')")
    for topic in declared:
        if not valid_topic(topic):
            raise _refused(owner, "former_topics must be a tuple of topics ('module:Class')")
    return tuple(declared)


def valid_topic(topic: object) -> bool:
    """Whether ``topic`` reads as a topic: ``module:QualName``."""
    return type(topic) is str and _TOPIC.fullmatch(topic) is not None


@dataclasses.dataclass(frozen=True)
class Schema:
    """One class's schema version and upcast steps, checked; worked out once per class."""

    owner: type
    version: int
    steps: dict[int, Step]  # step K -> K + 1, by K

    @classmethod
    def of(cls, owner: type) -> Schema:
        """The class's declarations, checked (:class:`SchemaMismatch` names a wrong one)."""
        version = own_version(owner)
        if dataclasses.is_dataclass(owner):
            fields = {f.name for f in dataclasses.fields(owner)}
            for name in _DECLARED:
                if name in fields:
                    raise _refused(owner, f"{name} is a field: declare it {name}: ClassVar[...]")
        steps: dict[int, Step] = {}
        for name in class_namespace(owner):
            found = _STEP.fullmatch(name)
            if found is None:
                continue
            start, end = int(found[1]), int(found[2])
            if start < 1 or end != start + 1:
                raise _refused(
                    owner,
                    f"{name} is no upcast step: a step goes from one version to the next "
                    f"(upcast_v{start}_v{start + 1})",
                )
            if end > version:
                raise _refused(
                    owner, f"{name} upcasts beyond the class's schema_version ({version})"
                )
            step = getattr(owner, name)
            if not callable(step):
                raise _refused(owner, f"{name} is not a function")
            steps[start] = step
        return cls(owner, version, steps)

    @property
    def name(self) -> str:
        return self.owner.__qualname__

    def upcast(self, data: dict[str, Any], fields: Collection[str] | None) -> dict[str, Any]:
        """``data`` (the stored fields, decoded, with their ``"#v"`` if any) in the class's
        current form: the steps from its stored version on, then, if the class declares
        its ``fields``, checked to be exactly those. :class:`SchemaMismatch` says why not;
        :class:`NoUpcastStep` when a step is missing."""
        stored = data.pop(VERSION_KEY, 1)
        if type(stored) is not int or stored < 1:
            raise self._mismatch(
                None, "its stored schema version is not a whole number of at least 1"
            )
        if stored > self.version:
            raise self._mismatch(
                stored,
                f"that is newer than the class's schema_version {self.version} (written by "
                "newer code?)",
                missing=True,
            )
        for version in range(stored, self.version):
            step = self.steps.get(version)
            name = f"{self.name}.upcast_v{version}_v{version + 1}"
            if step is None:
                raise self._mismatch(
                    stored,
                    f"it has no upcast step {name} (deleted before 'cairn upgrade' rewrote "
                    "every record of that version?)",
                    missing=True,
                )
            try:
                data = step(data)
            except Exception as exc:
                raise self._mismatch(
                    stored, f"its upcast step {name} raised {raised(exc)}"
                ) from None
            if type(data) is not dict:
                raise self._mismatch(
                    stored, f"its upcast step {name} returned a {type(data).__name__}, not a dict"
                )
        if fields is not None and data.keys() != fields:
            self._check_fields(data, fields, stored)
        return data

    def _check_fields(self, data: dict[str, Any], fields: Collection[str], stored: int) -> None:
        unknown = sorted(k for k in data if k not in fields)
        if unknown:
            field = unknown[0]
            raise self._mismatch(
                stored,
                f"its field {_shown(field)} is no field of {self.name}, and no upcast step "
                "consumes it",
                field=field,
            )
        field = min(f for f in fields if f not in data)
        raise self._mismatch(
            stored,
            f"it lacks the field {_shown(field)} of {self.name}, and no upcast step adds it",
            field=field if type(field) is str else None,
        )

    def _mismatch(
        self, stored: int | None, reason: str, *, field: str | None = None, missing: bool = False
    ) -> SchemaMismatch:
        at = "" if stored is None else f" stored at schema version {stored}"
        text = f"{self.name}{at}: {reason}"
        error = NoUpcastStep if missing else SchemaMismatch
        return error(text, type_name=self.name, stored_version=stored, field=field, reason=text)


def _shown(name: object) -> str:
    quoted = ascii(name)
    return quoted if len(quoted) <= 40 else quoted[:36] + "...'"


def raised(exc: BaseException) -> str:
    """An exception as a message may name it: its class and where it was raised, never its
    text (which may quote the data)."""
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        name += f" at {last.filename.rpartition('/')[2]}:{last.lineno}"
    return name
