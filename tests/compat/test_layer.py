"""melange.compat stays apart: nothing in melange imports it, and each name warns."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import melange
from tests.test_layout import imports_of, module_name

PACKAGE = Path(melange.__file__).resolve().parent


def test_nothing_in_melange_imports_the_compat_module() -> None:
    found = [
        f"{module_name(path)} imports {imported}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if not module_name(path).startswith("melange.compat")
        for imported in imports_of(path)
        if imported.startswith("melange.compat")
    ]
    assert found == []


def test_building_a_melange7_name_warns_with_its_replacement() -> None:
    from melange.compat import InMemoryMessagingBackend, QueuePublisher, SerializerRegistry

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        QueuePublisher(SerializerRegistry({"serializers": {}}), InMemoryMessagingBackend())
    messages = [str(w.message) for w in caught if w.category is DeprecationWarning]
    assert any("QueuePublisher" in m and "MessagePublisher" in m for m in messages)


def test_importing_compat_loads_no_broker_driver() -> None:
    import subprocess
    import sys

    code = "import sys, melange.compat; print([m for m in ('boto3','redis') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["AWSBackend", "LocalSQSBackend", "AsyncLocalSQSBackend"])
def test_the_sqs_names_load_on_first_use(name: str) -> None:
    import melange.compat

    assert getattr(melange.compat, name).__name__ == name
