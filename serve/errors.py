"""Errors serving raises on bad input: each names what is wrong and where."""


class BundleError(Exception):
    """A bundle directory is missing a file, has another format version, or is inconsistent."""


class UnknownIdError(LookupError):
    """A user or item id that the bundle does not know."""

    def __init__(self, kind: str, raw_id: object, known: int):
        self.kind, self.raw_id = kind, raw_id
        super().__init__(f"unknown {kind} id {raw_id!r}: not one of the bundle's {known} {kind}s")

    def __str__(self) -> str:  # LookupError would quote the message like a key
        return self.args[0]


class UnknownUserError(UnknownIdError):
    def __init__(self, raw_id: object, known: int):
        super().__init__("user", raw_id, known)


class UnknownItemError(UnknownIdError):
    def __init__(self, raw_id: object, known: int):
        super().__init__("item", raw_id, known)


def check_k(k: object) -> int:
    """`k` as a positive int, or a ValueError naming the bad value."""
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return k
