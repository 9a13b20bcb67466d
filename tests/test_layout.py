"""The package's shape: imports point down, stores keep off backends' privates, fields agree."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

from melange.models import Message, _unchecked

PACKAGE = Path(__file__).resolve().parent.parent / "melange"

# Lower layers must not import higher ones (the order: models -> serializers /
# backends -> publishers, consumers -> dispatcher -> saga, cli).
ABOVE_BACKENDS = (
    "melange.consumers",
    "melange.dispatcher",
    "melange.pipeline",
    "melange.publishers",
    "melange.saga",
    "melange.aio",
    "melange.cli",
)
# melange.aio adapts the dispatcher and the sagas to asyncio: it sits on both.
ABOVE_DISPATCHER = ("melange.saga", "melange.aio", "melange.cli", "melange.testing")
# The one upward import there is: a deprecated alias, loaded only when it is asked for.
DEPRECATED_ALIASES = {("melange.backends.memory", "melange.testing")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def files_under(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


def within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(f"{p}.") for p in packages)


def allowed(source: str, imported: str) -> bool:
    return any(source == s and within(imported, (t,)) for s, t in DEPRECATED_ALIASES)


def upward_imports(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in files_under(folder):
        source = module_name(path)
        for imported in sorted(imports_of(path)):
            if within(imported, forbidden) and not allowed(source, imported):
                found.append(f"{source} imports {imported}")
    return found


def test_the_scan_sees_function_level_imports() -> None:
    assert "melange.testing" in imports_of(PACKAGE / "backends" / "memory.py")


@pytest.mark.parametrize("folder", ["backends", "serializers", "idempotency"])
def test_backends_serializers_and_stores_import_nothing_above_them(folder: str) -> None:
    assert upward_imports(folder, ABOVE_BACKENDS) == []


def test_nothing_but_the_saga_aio_cli_and_testing_layers_imports_them() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        if within(source, (*ABOVE_DISPATCHER, "melange.__main__")):
            continue
        for imported in sorted(imports_of(path)):
            if within(imported, ABOVE_DISPATCHER) and not allowed(source, imported):
                found.append(f"{source} imports {imported}")
    assert found == []


def test_no_store_imports_a_backends_private_module() -> None:
    found = []
    for path in files_under("idempotency"):
        for imported in sorted(imports_of(path)):
            parts = imported.split(".")
            if imported.startswith("melange.backends") and any(p.startswith("_") for p in parts):
                found.append(f"{module_name(path)} imports {imported}")
    assert found == []


def test_each_backend_is_a_package_whose_helpers_are_private() -> None:
    for name in ("rabbitmq", "sqs", "sqlite"):
        folder = PACKAGE / "backends" / name
        assert (folder / "__init__.py").is_file()
        helpers = [p.name for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert helpers, name
        assert all(helper.startswith("_") for helper in helpers), helpers
    flat = sorted(p.name for p in (PACKAGE / "backends").glob("*.py"))
    assert flat == [
        "__init__.py",
        "decoding.py",
        "interfaces.py",
        "memory.py",
        "naming.py",
        "routing.py",
        "testing.py",
    ]


def test_the_fast_message_constructor_sets_every_field_of_message() -> None:
    fields = [field.name for field in dataclasses.fields(Message)]
    assert list(inspect.signature(_unchecked).parameters) == fields
    values = {
        "content": "body",
        "message_id": "m-1",
        "metadata": {"k": "v"},
        "serializer_id": 7,
        "manifest": "Thing",
        "receive_count": 3,
        "receipt": object(),
    }
    built = _unchecked(*(values[name] for name in fields))
    assert built == Message(**values)
    assert all(getattr(built, name) is values[name] for name in fields)
