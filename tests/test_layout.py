"""The package's shape: imports point down, stores keep off backends' privates, fields agree."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

from melange.models import Message, unchecked_message

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
ABOVE_DISPATCHER = (
    "melange.saga",
    "melange.aio",
    "melange.cli",
    "melange.testing",
    "melange.compat",
)
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
    assert list(inspect.signature(unchecked_message).parameters) == fields
    values = {
        "content": "body",
        "message_id": "m-1",
        "metadata": {"k": "v"},
        "serializer_id": 7,
        "manifest": "Thing",
        "receive_count": 3,
        "receipt": object(),
    }
    built = unchecked_message(*(values[name] for name in fields))
    assert built == Message(**values)
    assert all(getattr(built, name) is values[name] for name in fields)


# -- one engine, one contract ------------------------------------------------------------


def underscore_names_defined(tree: ast.AST) -> set[str]:
    """The private names a file defines: functions, classes, attributes and variables it sets."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ entries
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def cross_module_private_uses() -> list[str]:
    """Each use of a melange private name outside the file that defines it.

    A private module may be imported within its own package (a backend's
    helpers); a private name may not be imported from another module, nor
    reached as an attribute (``other._thing``) from a file that does not define it.
    """
    trees = {path: ast.parse(path.read_text()) for path in sorted(PACKAGE.rglob("*.py"))}
    defined = {path: underscore_names_defined(tree) for path, tree in trees.items()}
    everywhere = set().union(*defined.values())
    found = []
    for path, tree in trees.items():
        source = module_name(path)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("melange")
            ):
                package = (
                    node.module.rsplit(".", 1)[0]
                    if private(node.module.rsplit(".", 1)[-1])
                    else node.module
                )
                for alias in node.names:
                    if private(alias.name) and not source.startswith(package):
                        found.append(f"{source} imports {node.module}.{alias.name}")
            elif isinstance(node, ast.Attribute) and private(node.attr):
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue
                if node.attr in everywhere and node.attr not in defined[path]:
                    found.append(f"{source}:{node.lineno} uses .{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names() -> None:
    assert cross_module_private_uses() == []


def test_the_scan_sees_a_private_name_used_across_files(tmp_path: Path) -> None:
    tree = ast.parse("def f(dispatcher):\n    return dispatcher._queue_state('q')\n")
    assert "_queue_state" not in underscore_names_defined(tree)
    assert underscore_names_defined(ast.parse("class A:\n    def _queue_state(self): ...\n")) == {
        "_queue_state"
    }


def test_the_async_backend_contract_is_the_sync_one_method_by_method() -> None:
    from melange.aio import AsyncMessagingBackend
    from melange.backends.interfaces import BackendCapabilities, MessagingBackend

    def public_methods(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(member)
            for name, member in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")
        }

    sync, aio = public_methods(MessagingBackend), public_methods(AsyncMessagingBackend)
    assert sorted(sync) == sorted(aio)
    for name, signature in sync.items():
        twin = aio[name]
        assert list(twin.parameters.values()) == list(signature.parameters.values()), name
        member = getattr(AsyncMessagingBackend, name)
        assert inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member), name
    abstract = set(MessagingBackend.__abstractmethods__)
    assert abstract <= set(AsyncMessagingBackend.__abstractmethods__)
    for interface in (MessagingBackend, AsyncMessagingBackend):
        built = inspect.getattr_static(interface, "from_url")
        assert isinstance(built, classmethod), interface
        assert list(inspect.signature(built.__func__).parameters) == ["cls", "url"]
        assert issubclass(interface, BackendCapabilities)
    declared = inspect.get_annotations(BackendCapabilities)
    assert {
        "default_visibility_timeout",
        "default_max_receive_count",
        "max_message_size",
        "messaging_system",
        "max_delay_seconds",
    } <= set(declared)
    for attribute in declared:
        assert attribute not in vars(AsyncMessagingBackend), attribute  # one copy, shared


def test_the_consume_engine_is_one_package_both_loops_import() -> None:
    modules = sorted(p.stem for p in (PACKAGE / "consuming").glob("*.py"))
    assert modules == [
        "__init__",
        "async_decisions",
        "decisions",
        "engine",
        "groups",
        "holding",
        "pacing",
        "queues",
        "routing",
        "settling",
    ]
    for loop in (PACKAGE / "dispatcher.py", PACKAGE / "aio" / "_dispatcher.py"):
        imported = imports_of(loop)
        assert "melange.consuming.engine.EngineOwner" in imported, loop
        assert any(name.startswith("melange.consuming.groups.") for name in imported), loop
        assert "melange.consuming.holding.HeldMessages" in imported, loop
    assert not (PACKAGE / "pipeline.py").exists()
    assert not (PACKAGE / "aio" / "_pipeline.py").exists()


def test_one_outgoing_type_and_one_publish_path() -> None:
    for publisher in (PACKAGE / "publishers.py", PACKAGE / "aio" / "_publisher.py"):
        source = publisher.read_text()
        assert "type: ignore" not in source, publisher
        assert "melange.sending.Sending" in imports_of(publisher), publisher
    defined = {
        node.name
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
    }
    assert {"Outgoing", "Destination"} <= defined
    assert not defined & {"PendingMessage", "HeldPublish", "_Target"}


def test_middleware_is_a_package_with_one_module_per_built_in() -> None:
    modules = sorted(p.stem for p in (PACKAGE / "middleware").glob("*.py"))
    assert modules == [
        "__init__",
        "base",
        "consume_scopes",
        "held_publishes",
        "idempotency",
        "idempotency_async",
        "publish_scopes",
        "recording",
        "scope",
        "telemetry",
    ]
    assert not (PACKAGE / "middleware.py").exists()
    assert not (PACKAGE / "aio" / "_idempotency.py").exists()
    assert not (PACKAGE / "testing" / "_recording.py").exists()
    # The old homes only re-export; none defines a class of its own.
    for old in (PACKAGE / "builtin_middleware.py", PACKAGE / "telemetry.py"):
        tree = ast.parse(old.read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef)]


def test_the_scopes_type_their_owners() -> None:
    from melange.middleware import Consuming, Publishing

    assert inspect.get_annotations(Consuming)["dispatcher"] == "object"
    assert inspect.get_annotations(Publishing)["publisher"] == "object"
    assert inspect.get_annotations(Publishing)["messaging_system"] == "str"
    assert "getattr(" not in (PACKAGE / "middleware" / "telemetry.py").read_text()
