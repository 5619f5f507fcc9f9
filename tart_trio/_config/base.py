"""The base Struct of every config and state type, and the field documentation helper."""

from __future__ import annotations

from typing import ClassVar

import msgspec
from msgspec import Meta


class Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Frozen, strict Struct whose repr never shows a field listed in ``__secret_fields__``."""

    __secret_fields__: ClassVar[frozenset[str]] = frozenset()

    def __repr__(self) -> str:
        parts = []
        for name in self.__struct_fields__:
            value = getattr(self, name)
            shown = "<redacted>" if name in self.__secret_fields__ and value else repr(value)
            parts.append(f"{name}={shown}")
        return f"{type(self).__name__}({', '.join(parts)})"

    __str__ = __repr__


def doc(text: str) -> Meta:
    """A field's description, which the hclspec and the README's tables show."""
    return Meta(description=text)
