"""The README starts with its two commands, the example runs, ``__all__`` lists the public names."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import melange

ROOT = Path(__file__).resolve().parent.parent


def test_readme_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)```", text, flags=re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make demo", "make test"]


def test_quickstart_example_ships_every_order() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.quickstart", "--orders", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "done: 4 of 4 orders shipped" in result.stdout


def public_modules() -> list[str]:
    names = ["melange"]
    for info in pkgutil.walk_packages(melange.__path__, "melange."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def names_defined_at_the_top(module: ModuleType) -> set[str]:
    """Public names a module's own source binds at its top level (not its imports)."""
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {name for name in names if not name.startswith("_")}


@pytest.mark.parametrize("module_name", public_modules())
def test_all_lists_exactly_the_public_names(module_name: str) -> None:
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:  # an optional driver that is not installed
        pytest.skip(str(e))
    assert hasattr(module, "__all__"), f"{module_name} has no __all__"
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.__all__ names missing {name}"
    unlisted = names_defined_at_the_top(module) - set(module.__all__)
    assert unlisted == set(), f"{module_name} defines public names not in __all__"


def test_importing_melange_loads_no_broker_driver() -> None:
    code = (
        "import sys, melange, melange.backends;"
        "print(sorted(m for m in ('pika','boto3','redis') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


def test_every_docs_page_the_code_cites_exists() -> None:
    root = Path(melange.__file__).resolve().parent
    cited = {
        (path, page)
        for path in root.rglob("*.py")
        for page in re.findall(r"\bdocs/[\w/.-]+\.md\b", path.read_text())
    }
    assert cited, "the code cites no docs page at all: the pattern is wrong"
    missing = sorted(
        f"{p.relative_to(root)}: {page}" for p, page in cited if not (root.parent / page).exists()
    )
    assert missing == []
