"""The hclspec Nomad decodes config with is derived field by field from the Structs."""

from __future__ import annotations

import msgspec
import pytest

from tart_trio._config.base import Base
from tart_trio._config.hclspec import Attr, Block, BlockList, Default, Literal, Object, object_spec
from tart_trio._config.plugin import PluginConfig
from tart_trio._config.task import TaskConfig


def _attr(spec: object) -> Attr:
    if isinstance(spec, Default):
        assert isinstance(spec.default, Literal)
        spec = spec.primary
    assert isinstance(spec, Attr)
    return spec


def _unwrap(info: msgspec.inspect.Type) -> msgspec.inspect.Type:
    """Strip Annotated metadata and Optional from a type."""
    while True:
        if isinstance(info, msgspec.inspect.Metadata):
            info = info.type
        elif isinstance(info, msgspec.inspect.UnionType):
            info = next(t for t in info.types if not isinstance(t, msgspec.inspect.NoneType))
        else:
            return info


@pytest.mark.parametrize("struct", [TaskConfig, PluginConfig])
def test_every_field_appears_with_its_type(struct: type[Base]) -> None:
    def check(cls: type[Base], spec: Object) -> None:
        fields = msgspec.structs.fields(cls)
        assert set(spec.attributes) == {f.encode_name for f in fields}
        for field in fields:
            node = spec.attributes[field.encode_name]
            info = _unwrap(msgspec.inspect.type_info(field.type))
            if isinstance(info, msgspec.inspect.StructType):
                assert isinstance(node, Block) and node.name == field.encode_name
                check(info.cls, node.nested)  # type: ignore[arg-type]
            elif isinstance(info, msgspec.inspect.VarTupleType) and isinstance(
                info.item_type, msgspec.inspect.StructType
            ):
                assert isinstance(node, BlockList) and node.name == field.encode_name
                check(info.item_type.cls, node.nested)  # type: ignore[arg-type]
            else:
                attr = _attr(node)
                assert attr.name == field.encode_name
                assert attr.required == field.required
                expected = {
                    msgspec.inspect.StrType: "string",
                    msgspec.inspect.BoolType: "bool",
                    msgspec.inspect.IntType: "number",
                    msgspec.inspect.FloatType: "number",
                }
                if isinstance(info, msgspec.inspect.VarTupleType):
                    assert attr.type == f"list({expected[type(_unwrap(info.item_type))]})"
                else:
                    assert attr.type == expected[type(info)]
                has_default = not field.required and field.default is not None
                assert isinstance(node, Default) == has_default

    check(struct, object_spec(struct))


def test_defaults_are_hcl_literals() -> None:
    spec = object_spec(TaskConfig).attributes
    assert spec["show_ui"] == Default(Attr("show_ui", "bool"), Literal("false"))
    assert spec["disk_size"] == Default(Attr("disk_size", "number"), Literal("0"))
    plugin = object_spec(PluginConfig).attributes
    assert plugin["fingerprint_period"] == Default(
        Attr("fingerprint_period", "string"), Literal('"30s"')
    )
    assert plugin["enabled"] == Default(Attr("enabled", "bool"), Literal("true"))
