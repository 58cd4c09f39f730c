"""Every hook is documented: in hookspecs.py (docstring with each parameter) and in docs/plugins.md."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from conch import hookspecs

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
HOOKS = [
    (name, fn)
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("conch_")
]


def test_there_are_hooks() -> None:
    assert len(HOOKS) >= 5


@pytest.mark.parametrize(("name", "fn"), HOOKS, ids=[h[0] for h in HOOKS])
def test_hookspec_has_docstring_naming_every_parameter(name: str, fn: object) -> None:
    doc = inspect.getdoc(fn)
    assert doc and len(doc) > 40, f"hook {name} has no real docstring"
    for param in inspect.signature(fn).parameters:  # type: ignore[arg-type]
        assert f":param {param}:" in doc, f"hook {name} does not document parameter '{param}'"
    if inspect.signature(fn).return_annotation not in (None, "None"):  # type: ignore[arg-type]
        assert ":return:" in doc, f"hook {name} does not document its result"


@pytest.mark.parametrize(("name", "fn"), HOOKS, ids=[h[0] for h in HOOKS])
def test_hook_documented_in_plugin_guide_with_its_signature(name: str, fn: object) -> None:
    text = DOCS.read_text()
    params = ", ".join(inspect.signature(fn).parameters)  # type: ignore[arg-type]
    heading = f"### `{name}({params})`"
    assert heading in text, f"docs/plugins.md lacks the section '{heading}'"


def test_plugin_guide_documents_no_hook_that_does_not_exist() -> None:
    documented = set(re.findall(r"^### `(conch_\w+)\(", DOCS.read_text(), flags=re.M))
    assert documented == {name for name, _ in HOOKS}
