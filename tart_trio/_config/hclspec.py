"""Derive Nomad's hclspec from the config Structs, so the schema has a single source.

Each Struct becomes an Object spec. Scalars become ``Attr`` (required when the field has
no default; wrapped in ``Default`` with an HCL literal when it has one), optional nested
Structs become ``Block``, tuples of Structs become ``BlockList``, and tuples of scalars
become list attributes. The result is a plain tree that the rpc layer turns into protobuf.
"""

from __future__ import annotations

import json
import types
from typing import Annotated, Final, Union, get_args, get_origin

import msgspec

from tart_trio._config.base import Base


class Attr(msgspec.Struct, frozen=True):
    """An attribute with an HCL type expression."""

    name: str
    type: str
    required: bool = False


class Literal(msgspec.Struct, frozen=True):
    """An HCL native-syntax expression, used as a default."""

    value: str


class Default(msgspec.Struct, frozen=True):
    """``primary``, or ``default`` when primary is null."""

    primary: Spec
    default: Spec


class Block(msgspec.Struct, frozen=True):
    """Zero or one nested block."""

    name: str
    nested: Spec
    required: bool = False


class BlockList(msgspec.Struct, frozen=True):
    """Any number of nested blocks."""

    name: str
    nested: Spec
    min_items: int = 0
    max_items: int = 0


class Object(msgspec.Struct, frozen=True):
    """A body whose keys are attribute and block names."""

    attributes: dict[str, Spec]


Spec = Attr | Literal | Default | Block | BlockList | Object

_SCALARS: Final = {str: "string", bool: "bool", int: "number", float: "number"}


def _unwrap(annotation: object) -> tuple[object, bool]:
    """Strip Annotated and Optional; return (inner type, allows None)."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        inner, _ = _unwrap(args[0])
        return inner, len(args) < len(get_args(annotation))
    return annotation, False


def hcl_type(annotation: object) -> str:
    """The HCL type expression for a scalar or a tuple of scalars."""
    inner, _ = _unwrap(annotation)
    if get_origin(inner) is tuple:
        return f"list({hcl_type(get_args(inner)[0])})"
    if isinstance(inner, type) and inner in _SCALARS:
        return _SCALARS[inner]
    raise TypeError(f"no HCL type for {inner!r}")


def _literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _is_struct(inner: object) -> bool:
    return isinstance(inner, type) and issubclass(inner, Base)


def _field_spec(field: msgspec.structs.FieldInfo) -> Spec:
    inner, _optional = _unwrap(field.type)
    if _is_struct(inner):
        assert isinstance(inner, type)
        return Block(name=field.encode_name, nested=object_spec(inner))
    if get_origin(inner) is tuple and _is_struct(get_args(inner)[0]):
        return BlockList(name=field.encode_name, nested=object_spec(get_args(inner)[0]))
    attr = Attr(name=field.encode_name, type=hcl_type(inner), required=field.required)
    if field.required or field.default is None or field.default is msgspec.NODEFAULT:
        return attr
    return Default(primary=attr, default=Literal(_literal(field.default)))


def object_spec(struct_type: type[Base]) -> Object:
    """The Object spec for a config Struct, field by field."""
    fields = msgspec.structs.fields(struct_type)
    return Object(attributes={f.encode_name: _field_spec(f) for f in fields})
