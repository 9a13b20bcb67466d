"""Backends from other packages: ``register()``, the ``melange.backends`` entry point group.

A real package is built and installed (pip, offline) into a temporary folder;
its backend passes the shipped ``BackendContract`` and serves ``from_url``
and ``melange worker --backend``.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import melange.backends
from melange import MessagePublisher
from melange.backends import from_url, register, registered_schemes
from melange.backends.interfaces import MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.exceptions import ConfigurationError
from melange.testing import BackendContract, ContractEvent

PACKAGE_SOURCE = '''
"""The embedded broker under a scheme of its own: filebroker:///path/to.db."""

from urllib.parse import urlsplit

from melange.backends.sqlite import SQLiteBackend


class FileBackend(SQLiteBackend):
    @classmethod
    def from_url(cls, url: str) -> "FileBackend":
        return cls(urlsplit(url).path)
'''

PYPROJECT = """
[build-system]
requires = ["setuptools>=70.1"]
build-backend = "setuptools.build_meta"

[project]
name = "melange-filebroker"
version = "1.0"

[project.entry-points."melange.backends"]
filebroker = "melange_filebroker:FileBackend"
broken = "melange_filebroker:Missing"
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Build and install the package into a folder, then put that folder on sys.path."""
    source = tmp_path_factory.mktemp("filebroker-src")
    (source / "melange_filebroker").mkdir()
    (source / "melange_filebroker" / "__init__.py").write_text(textwrap.dedent(PACKAGE_SOURCE))
    (source / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    site = tmp_path_factory.mktemp("filebroker-site")
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"),
            *("--no-build-isolation", "--target", str(site), str(source)),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("melange_filebroker", None)
        melange.backends._registered.pop("filebroker", None)


class TestAnInstalledBackend(BackendContract):
    @pytest.fixture
    def backend(self, installed: Path, tmp_path: Path) -> Iterator[MessagingBackend]:
        backend = from_url(f"filebroker://{tmp_path}/broker.db")
        assert type(backend).__module__ == "melange_filebroker"
        with backend:
            yield backend


def test_installed_schemes_are_listed_and_a_broken_one_is_a_typed_error(installed: Path) -> None:
    assert {"filebroker", "broken", "sqlite", "memory"} <= set(registered_schemes())
    with pytest.raises(ConfigurationError, match="melange_filebroker:Missing"):
        from_url("broken://x")


def test_melange_worker_runs_on_an_installed_backend(installed: Path, tmp_path: Path) -> None:
    url = f"filebroker://{tmp_path}/broker.db"
    with from_url(url) as backend:
        backend.declare_queue("numbers", dead_letter_queue_name="numbers-dlq")
        MessagePublisher(backend).publish_batch(
            [ContractEvent(number=n) for n in (1, 2)], queue="numbers"
        )
    out = tmp_path / "effects.txt"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "melange.cli", "--backend", url, "worker"),
            *("melange.testing._contract_workers:consumers", "--queue", "numbers"),
            *("--no-declare", "--idle-timeout", "1"),
        ],
        env={**os.environ, "PYTHONPATH": str(installed), "CONTRACT_OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "handled 2 message(s) from numbers" in result.stdout
    assert sorted(line.split()[0] for line in out.read_text().splitlines()) == ["1", "2"]


@pytest.fixture
def scheme() -> Iterator[str]:
    yield "inproc"
    melange.backends._registered.pop("inproc", None)


def test_a_registered_factory_builds_its_scheme(scheme: str) -> None:
    made: list[str] = []

    def factory(url: str) -> InMemoryMessagingBackend:
        made.append(url)
        return InMemoryMessagingBackend()

    register(scheme, factory)
    assert isinstance(from_url("INPROC://anything?x=1"), InMemoryMessagingBackend)
    assert made == ["INPROC://anything?x=1"]
    assert scheme in registered_schemes()
    register(scheme, factory)  # the same factory again is fine
    with pytest.raises(ConfigurationError, match="registered already"):
        register(scheme, InMemoryMessagingBackend.from_url)
    register(scheme, InMemoryMessagingBackend.from_url, replace=True)
    assert made == ["INPROC://anything?x=1"]
    from_url("inproc://")
    assert made == ["INPROC://anything?x=1"]


@pytest.mark.parametrize(("scheme", "reason"), [("sqlite", "melange's own"), ("1x", "not a URL")])
def test_register_refuses_melanges_schemes_and_malformed_ones(scheme: str, reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason):
        register(scheme, InMemoryMessagingBackend.from_url)


def test_an_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown backend URL scheme 'nope'.*memory://"):
        from_url("nope://x")
