"""containerd's identifier rules, checked before an id (container, exec, namespace) becomes
part of a path, a socket name or a runc argument.

Lean on purpose (no `re`: it costs `start` and `delete` milliseconds). Raises
InvalidIdentifier; the front ends map it to their own error.
"""

from __future__ import annotations

MAX_LENGTH = 76
PATTERN = "^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$"
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_SEPARATORS = frozenset("._-")


class InvalidIdentifier(ValueError):
    """The id cannot be used; the message follows containerd's wording."""


def _matches(identifier: str) -> bool:
    """PATTERN: alphanumerics separated by single '.', '_' or '-', none at either end."""
    previous_was_separator = True  # so a leading separator fails
    for char in identifier:
        if char in _ALNUM:
            previous_was_separator = False
        elif char in _SEPARATORS and not previous_was_separator:
            previous_was_separator = True
        else:
            return False
    return not previous_was_separator


def validate(identifier: str, what: str = "identifier") -> str:
    """`identifier` unchanged when containerd would accept it; InvalidIdentifier otherwise."""
    if not identifier:
        raise InvalidIdentifier(f"{what} must not be empty")
    if len(identifier) > MAX_LENGTH:
        raise InvalidIdentifier(
            f"{what} {identifier[:MAX_LENGTH]!r}... greater than maximum length "
            f"({MAX_LENGTH} characters)"
        )
    if not _matches(identifier):
        raise InvalidIdentifier(f"{what} {identifier!r} must match {PATTERN}")
    return identifier
