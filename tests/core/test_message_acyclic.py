"""``Message`` is declared acyclic to mypyc (``@mypyc_attr(acyclic=True)``, issue 14):
the compiled class is then not tracked by the cyclic garbage collector, which is only
sound while nothing a Message holds can refer back to a Message. These tests keep
that promise checked: every field of Message and of the Properties it holds is of a
type that cannot reach a Message, and the compiled build really builds untracked
Messages (the pure build's are tracked, as any slotted instance)."""

from __future__ import annotations

import ast
import gc
import re
from pathlib import Path

import pytest

import iotbroker
from iotbroker import build
from iotbroker.codec.packets import NO_PROPERTIES, Properties
from iotbroker.message import Delivery, Message

#: Names an annotation may use: types that hold no reference to an arbitrary object,
#: tuples of them, and Properties (checked the same way).
_LEAF_NAMES = {"str", "bytes", "int", "bool", "float", "None", "tuple", "Properties",
               "UserProperties"}
_SOURCES = {"Message": "message.py", "Properties": "codec/packets.py"}


def _field_annotations(cls: str) -> dict[str, str]:
    """The class's field annotations as written in its source (the compiled class's
    ``__annotations__`` lose unions: read the source, the same for both builds)."""
    tree = ast.parse((Path(iotbroker.__file__).parent / _SOURCES[cls]).read_text("utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    return {stmt.target.id: ast.unparse(stmt.annotation) for stmt in node.body
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)}


@pytest.mark.parametrize("cls", ["Message", "Properties"])
def test_every_field_is_of_a_type_that_cannot_refer_back(cls: str) -> None:
    fields = _field_annotations(cls)
    assert len(fields) >= 10
    bad = {name: annotation for name, annotation in fields.items()
           if not set(re.findall(r"[A-Za-z_]+", annotation)) <= _LEAF_NAMES}
    assert not bad, f"{cls} fields that could hold a Message: {bad}"


def test_user_properties_are_tuples_of_strings() -> None:
    source = (Path(iotbroker.__file__).parent / "codec/packets.py").read_text("utf-8")
    assert "UserProperties = tuple[tuple[str, str], ...]" in source


def test_the_compiled_message_is_not_tracked_by_the_collector() -> None:
    message = Message("a/b", b"x" * 64, 0, False, Properties(
        user_properties=(("k", "v"),)), 1.0, 2.0, "client", 0, 0, b"a/b")
    # Delivery stays an ordinary (tracked) class: only Message is declared acyclic.
    delivery = Delivery(message, 0)
    if "iotbroker.message" in build.compiled_modules():
        assert not gc.is_tracked(message)
    else:
        assert gc.is_tracked(message)
    assert gc.is_tracked(delivery)
    # and it still is a whole Message, compared by value as before
    assert message == Message("a/b", b"x" * 64, 0, False, Properties(
        user_properties=(("k", "v"),)), 1.0, 2.0, "client")
    assert message != Message("a/b", b"y", 0, False, NO_PROPERTIES, 1.0)
