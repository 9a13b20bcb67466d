"""``melange schema check OLD NEW`` and ``changes``: breaking changes between two releases."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from melange.cli import main
from melange.serializers import Upcasters
from melange.serializers.compatibility import changes

OLD = """
from dataclasses import dataclass
from pydantic import BaseModel

class Registered(BaseModel):
    __melange_manifest__ = "schema.registered"
    name: str
    email: str

class Shipped(BaseModel):
    __melange_manifest__ = "schema.shipped"
    order_id: str

@dataclass
class Paid:
    __melange_manifest__ = "schema.paid"
    amount: int
"""

NEW = """
from dataclasses import dataclass
from pydantic import BaseModel

class Registered(BaseModel):
    __melange_manifest__ = "schema.registered"
    name: str
    email: str
    newsletter: bool = False

class Shipped(BaseModel):
    __melange_manifest__ = "schema.shipped"
    order_id: str
    carrier: str

@dataclass
class Paid:
    __melange_manifest__ = "schema.paid"
    amount: float
"""


def releases(tmp_path: Path, old: str, new: str) -> tuple[str, str]:
    (tmp_path / "old.py").write_text(textwrap.dedent(old))
    (tmp_path / "new.py").write_text(textwrap.dedent(new))
    return str(tmp_path / "old.py"), str(tmp_path / "new.py")


def test_breaking_changes_are_reported_and_fail_the_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = releases(tmp_path, OLD, NEW)
    assert main(["schema", "check", old, new, "--json"]) == 1
    found = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_field = {(c["manifest"], c["field"]): (c["what"], c["breaking"]) for c in found}
    assert by_field == {
        ("schema.paid", "amount"): ("type int -> float", True),
        ("schema.registered", "newsletter"): ("added, optional", False),
        ("schema.shipped", "carrier"): ("added, required: old messages lack it", True),
    }


def test_compatible_releases_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = releases(tmp_path, OLD, OLD.replace("email: str", "email: str\n    note: str = ''"))
    assert main(["schema", "check", old, new]) == 0
    assert "1 change(s), 0 breaking" in capsys.readouterr().out
    assert main(["schema", "check", old, old]) == 0
    assert "0 change(s), 0 breaking" in capsys.readouterr().out


def test_a_raised_version_with_upcasters_covers_new_required_fields() -> None:
    from pydantic import BaseModel

    class V1(BaseModel):
        __melange_manifest__ = "schema.split"
        name: str

    class V2(BaseModel):
        __melange_manifest__ = "schema.split"
        __melange_version__ = 2
        first_name: str

    steps = Upcasters()
    without = changes(V1, V2, steps)
    assert [c.breaking for c in without if c.field == "first_name"] == [True]
    assert any("no upcaster chain from version 1" in c.what for c in without)
    steps.register("schema.split", 1, lambda old: {"first_name": old["name"]})
    covered = {c.field: c.breaking for c in changes(V1, V2, steps)}
    # The removed `name` still breaks consumers of version 1; the rest is upcast.
    assert covered == {None: False, "first_name": False, "name": True}


def test_a_module_that_cannot_be_imported_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema", "check", "no_such_module_here", str(tmp_path / "x.py")]) == 2
    assert "cannot import no_such_module_here" in capsys.readouterr().err
