"""Every code block in the README and docs runs as written.

A page is one session: its Python blocks run in order in one namespace, in a
folder of their own. A page whose code defines tests (``class Test…``) runs
under pytest, which must pass them all. Shell blocks run through the
installed ``melange`` command, except ``make`` (what CI runs) and ``pip
install`` (checked against the extras melange declares); TOML blocks must
parse.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", flags=re.S | re.M)


def blocks(page: Path, language: str) -> list[str]:
    return [code for lang, code in FENCE.findall(page.read_text()) if lang == language]


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def defines_tests(code: str) -> bool:
    return re.search(r"^class Test\w*\(", code, flags=re.M) is not None


def test_every_block_says_its_language() -> None:
    bare = [
        page_id(p) for p in PAGES if any(lang == "" for lang, _ in FENCE.findall(p.read_text()))
    ]
    assert bare == []


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=page_id)
def test_the_python_blocks_of_a_page_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = "\n\n".join(blocks(page, "python"))
    monkeypatch.chdir(tmp_path)
    if defines_tests(code):
        module = tmp_path / "test_page.py"
        module.write_text(code)
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(module)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-3000:]
        assert re.search(r"\d+ passed", result.stdout), result.stdout[-3000:]
        return
    namespace = {"__name__": f"docs_{page.stem}"}
    for block in blocks(page, "python"):
        # As a user's own file runs it: without this module's __future__ imports.
        exec(compile(block, page_id(page), "exec", dont_inherit=True), namespace)


def shell_commands(page: Path) -> list[str]:
    commands = []
    for block in blocks(page, "sh"):
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if command:
                commands.append(command)
    return commands


def test_pip_install_names_extras_melange_declares() -> None:
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    named = [
        command
        for page in PAGES
        for command in shell_commands(page)
        if command.startswith("pip install")
    ]
    assert named
    for command in named:
        for requirement in shlex.split(command)[2:]:
            wanted = re.fullmatch(r"melange\[([\w,]+)\]", requirement)
            assert wanted is not None, command
            assert set(wanted.group(1).split(",")) <= extras, command


@pytest.mark.parametrize("page", [p for p in PAGES if shell_commands(p)], ids=page_id)
def test_the_melange_commands_of_a_page_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = [c for c in shell_commands(page) if not c.startswith(("make ", "pip install"))]
    code = "\n\n".join(blocks(page, "python"))
    if not defines_tests(code):  # what the page's Python made, its commands look at
        monkeypatch.chdir(tmp_path)
        exec(compile(code, page_id(page), "exec", dont_inherit=True), {"__name__": "docs"})
    assert all(command.startswith("melange ") for command in commands), commands
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MELANGE_BACKEND_URL": f"sqlite:///{tmp_path / 'melange.db'}",
    }
    for command in commands:
        result = subprocess.run(
            [sys.executable, "-m", "melange.cli", *shlex.split(command)[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "toml")], ids=page_id)
def test_the_toml_blocks_of_a_page_parse(page: Path) -> None:
    for block in blocks(page, "toml"):
        assert tomllib.loads(block)
