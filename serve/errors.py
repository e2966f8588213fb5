"""Errors serving raises on bad input: each is typed and names what is wrong and where.

- `RequestError` (a ValueError): a caller's argument is invalid; `.field` names the argument
  (the request field: "k", "filters", "history", ...), `.value` holds what was given.
- `UnknownIdError` (a LookupError; `UnknownUserError`, `UnknownItemError`): a well-formed id the
  bundle does not know; `.field` says where it was given, `.kind` and `.raw_id` what it was.
- `BundleError`: the bundle itself is missing, inconsistent or not loaded yet.

Callers (the HTTP app, the command line) choose their answer from the type and read the field
from `.field`; the wording of a message is for people and may change.
"""

from __future__ import annotations

import reprlib

_SHORT = reprlib.Repr()  # how a value shows in a message: long lists and strings shortened
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = 8
_SHORT.maxstring = _SHORT.maxother = 80


class BundleError(Exception):
    """A bundle directory is missing a file, has another format version, or is inconsistent.

    `.path` names the file or directory at fault when one is known (else None); a file whose
    size or checksum disagrees with the manifest also carries `.expected` (the manifest's) and
    `.found` (the file's): sha256 hex digests, or byte counts for a size mismatch."""

    def __init__(
        self,
        message: str,
        *,
        path: object = None,
        expected: object = None,
        found: object = None,
    ):
        super().__init__(message)
        self.path, self.expected, self.found = path, expected, found

    def __reduce__(self):  # pickles (e.g. across processes) with its attributes
        return type(self), (self.args[0],), self.__dict__


class RequestError(ValueError):
    """A caller's `value` for `field` is invalid; `problem` says how, as a predicate of the
    field ("must be a positive integer"). The message names the field and the value:
    "k must be a positive integer, got 0" (long values are shortened in the message only)."""

    def __init__(self, field: str, value: object, problem: str):
        self.field, self.value, self.problem = field, value, problem
        super().__init__(f"{field} {problem}, got {_SHORT.repr(value)}")

    def __reduce__(self):  # pickles (e.g. across processes) with its field and value
        return type(self), (self.field, self.value, self.problem)


class UnknownIdError(LookupError):
    """A user or item id that the bundle does not know, given as `field` of the request."""

    def __init__(self, kind: str, raw_id: object, count: int, field: str | None = None):
        """`count`: how many ids of this kind the bundle has (for the message)."""
        self.kind, self.raw_id = kind, raw_id
        self.field = field or f"{kind}_id"
        super().__init__(f"unknown {kind} id {raw_id!r}: not one of the bundle's {count} {kind}s")

    def __str__(self) -> str:  # LookupError would quote the message like a key
        return self.args[0]


class UnknownUserError(UnknownIdError):
    def __init__(self, raw_id: object, count: int, field: str = "user_id"):
        super().__init__("user", raw_id, count, field)


class UnknownItemError(UnknownIdError):
    def __init__(self, raw_id: object, count: int, field: str = "item_id"):
        super().__init__("item", raw_id, count, field)


def check_k(k: object) -> int:
    """`k` as a positive int, or a `RequestError` for field "k"."""
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise RequestError("k", k, "must be a positive integer")
    return k
