"""Old public names kept working after a rename: each use warns (DeprecationWarning) and names the new one."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")


def _warn(old: str, new: str) -> None:
    # stacklevel 3: the caller of the alias, past this function and the alias itself.
    warnings.warn(f"{old} is deprecated: use {new}", DeprecationWarning, stacklevel=3)


def module_aliases(
    module: str, renamed: Mapping[str, str], namespace: Mapping[str, Any]
) -> Callable[[str], Any]:
    """A module's ``__getattr__`` serving each old name of ``renamed`` (old -> new) as the new."""

    def __getattr__(name: str) -> Any:
        new = renamed.get(name)
        if new is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        _warn(f"{module}.{name}", f"{module}.{new}")
        return namespace[new]

    return __getattr__


class Alias(Generic[T]):
    """An attribute's old name, on a class: reading or setting it reads or sets the new one."""

    def __init__(self, new: str) -> None:
        self.new = new
        self.old = new

    def __set_name__(self, owner: type, name: str) -> None:
        self.old = f"{owner.__name__}.{name}"

    @overload
    def __get__(self, instance: None, owner: type) -> Alias[T]: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...
    def __get__(self, instance: object, owner: type | None = None) -> T | Alias[T]:
        if instance is None:
            return self
        _warn(self.old, f"{type(instance).__name__}.{self.new}")
        value: T = getattr(instance, self.new)
        return value

    def __set__(self, instance: object, value: T) -> None:
        _warn(self.old, f"{type(instance).__name__}.{self.new}")
        setattr(instance, self.new, value)
