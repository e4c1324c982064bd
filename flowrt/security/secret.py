"""A secret value that does not leak by accident.

A :class:`Secret` prints, formats and reprs as ``********``, so a credential that ends up in a
log line, an f-string or an exception message shows no password. The value is only available
through an explicit :meth:`Secret.reveal`, which makes every use easy to find in review.
"""

from __future__ import annotations

import hmac
from typing import Any, NoReturn

MASK = "********"


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("a Secret holds a str")
        self._value = value

    def reveal(self) -> str:
        """The secret itself. Hand it to the protocol that needs it and to nothing else."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return format(MASK, spec)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode("utf-8"), other._value.encode("utf-8"))

    def __hash__(self) -> int:
        # Hashing the value would let a dict leak it by timing; all secrets share a bucket.
        return hash(Secret)

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret is not pickled, so that it cannot leave the process by accident")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self
