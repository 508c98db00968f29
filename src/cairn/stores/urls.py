"""Store URLs: their passwords hidden in every message, and query options with one spelling for every store.

:func:`redact` hides the password of a URL where it shows it (the user's
part, and query parameters such as ``password=`` and ``sslpassword=``).
:func:`scrub` takes any text (a driver's error message, which may quote the
URL or a piece of it back) and hides every secret the URL holds, in each form
a driver may have written it.

A password may hold ``@``, ``/``, ``:`` or ``?`` without being percent-encoded,
so the user's part is taken to end at the *last* ``@``: an ``@`` in the query
then makes these hide more than needed, never less.

Every store reads its options through :class:`Options`: a flag is ``true``,
``false``, ``1``, ``0``, ``yes``, ``no``, ``on`` or ``off``; a duration is a
number of seconds above 0; a count a whole number. An option a store does
not know is refused, naming it, and so is a value it cannot take.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from urllib.parse import parse_qsl, unquote

from cairn.errors import StoreError

TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")

HIDDEN = "***"
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)
_SECRET_PARAM = re.compile(r"([?&][^=&#]*pass(?:word|phrase)[^=&#]*=)[^&#]*", re.I)
# What a driver may cut a malformed password at, quoting one piece of it.
_DELIMITERS = re.compile(r"[@/:?#&=,;\s]+")
MIN_PIECE = 4  # shorter pieces of a password carry next to no secret; hiding them mangles text


def redact(url: str) -> str:
    """The URL with its password, if any, as ``***`` (before the host, or as a query
    parameter named like a password)."""
    scheme = _SCHEME.match(url)
    if scheme is None:
        return _SECRET_PARAM.sub(rf"\1{HIDDEN}", url)
    rest = url[scheme.end() :]
    user, at, location = rest.rpartition("@")
    if at:
        name, colon, _ = user.partition(":")
        rest = f"{name}:{HIDDEN}@{location}" if colon else f"{user}@{location}"
    return scheme.group() + _SECRET_PARAM.sub(rf"\1{HIDDEN}", rest)


def secrets(url: str) -> set[str]:
    """Every string of ``url`` to hide: its passwords, as written and percent-decoded,
    and the pieces a driver may quote when it splits one at a delimiter."""
    found = []
    scheme = _SCHEME.match(url)
    rest = url[scheme.end() :] if scheme else url
    user, at, _ = rest.rpartition("@")
    if at and ":" in user:
        found.append(user.partition(":")[2])
    for match in _SECRET_PARAM.finditer(url):
        found.append(match.group().partition("=")[2])
    found += [value for name, value in parse_qsl(url.partition("?")[2]) if _is_secret(name)]
    hidden = set()
    for secret in found:
        for form in (secret, unquote(secret)):
            if form:
                hidden.add(form)
                hidden.update(p for p in _DELIMITERS.split(form) if len(p) >= MIN_PIECE)
    return hidden


def scrub(text: str, *urls: str) -> str:
    """``text`` with every secret of each URL hidden (longest first, so that a piece
    never leaves the rest of its password showing)."""
    hidden: set[str] = set()
    for url in urls:
        hidden |= secrets(url)
    for secret in sorted(hidden, key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    return text


def _is_secret(name: str) -> bool:
    return "password" in name.lower() or "passphrase" in name.lower()


def query_params(query: str) -> dict[str, str]:
    """A URL's query string as a dict (last value wins)."""
    return dict(parse_qsl(query, keep_blank_values=True))


class Options:
    """A store URL's query options, checked: each read by name, with its default.

    ``known`` are the store's own options; ``passed_on`` names others it hands
    to its driver as they are (``passed_on_as`` says what they are, for the
    message); any other option is refused. ``shown`` is the URL for messages.
    """

    def __init__(
        self,
        url: str,
        query: str,
        known: Sequence[str],
        *,
        passed_on: Collection[str] = (),
        passed_on_as: str = "",
    ) -> None:
        self.shown = redact(url)
        self.params = query_params(query)
        unknown = sorted(n for n in self.params if n not in known and n not in passed_on)
        if unknown:
            also = f", and {passed_on_as}" if passed_on_as else ""
            raise StoreError(
                f"{self.shown}: unknown option {', '.join(unknown)}; "
                f"the options are {', '.join(known) or 'none'}{also}"
            )
        self.known = known

    def given(self, name: str) -> bool:
        """Whether the URL gives the option a value (an empty one counts as not given)."""
        return bool(self.params.get(name))

    def passed_on(self) -> dict[str, str]:
        """The options that are not the store's own, for its driver."""
        return {k: v for k, v in self.params.items() if k not in self.known}

    def text(self, name: str, default: str | None = None) -> str | None:
        """The option as written; ``default`` when it is absent or empty."""
        return self.params.get(name) or default

    def flag(self, name: str, default: bool) -> bool:
        value = self.params.get(name)
        if value is None:
            return default
        if value.lower() in TRUE:
            return True
        if value.lower() in FALSE:
            return False
        raise self.error(f"{name} must be true or false, not {value!r}")

    def seconds(self, name: str, default: float, maximum: float | None = None) -> float:
        value = self.params.get(name)
        if value is None:
            return default
        try:
            seconds = float(value)
        except ValueError:
            seconds = 0.0
        if not seconds > 0:  # also refuses nan
            raise self.error(f"{name} must be a number of seconds above 0, not {value!r}")
        if maximum is not None and not seconds <= maximum:
            raise self.error(f"{name} must be at most {maximum:g} seconds, not {value!r}")
        return seconds

    def count(
        self, name: str, default: int | None, minimum: int = 1, maximum: int | None = None
    ) -> int | None:
        value = self.params.get(name)
        if value is None:
            return default
        if not value.isdigit() or int(value) < minimum:
            raise self.error(f"{name} must be a whole number of at least {minimum}, not {value!r}")
        if maximum is not None and int(value) > maximum:
            raise self.error(f"{name} must be at most {maximum}, not {value!r}")
        return int(value)

    def choice(self, name: str, default: str, choices: Sequence[str]) -> str:
        """One of ``choices`` (compared without case), in upper case."""
        value = self.params.get(name) or default
        if value.strip().upper() not in (c.upper() for c in choices):
            listed = ", ".join(c.lower() for c in choices)
            raise self.error(f"{name} must be one of {listed}, not {value!r}")
        return value.strip().upper()

    def error(self, problem: str) -> StoreError:
        """A StoreError about this URL (its password hidden)."""
        return StoreError(f"{self.shown}: {problem}")
