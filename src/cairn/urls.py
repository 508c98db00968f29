"""Store URLs carry passwords: one way to hide them in every message.

:func:`redact` hides the password of a URL where it shows it (the user's
part, and query parameters such as ``password=`` and ``sslpassword=``).
:func:`scrub` takes any text (a driver's error message, which may quote the
URL or a piece of it back) and hides every secret the URL holds, in each form
a driver may have written it.

A password may hold ``@``, ``/``, ``:`` or ``?`` without being percent-encoded,
so the user's part is taken to end at the *last* ``@``: an ``@`` in the query
then makes these hide more than needed, never less.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote

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
