"""The Variables the pipeline reads: one list, read the same way by the DAG and the results view."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from openai_batch import settings

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "openai_batch.py"


def test_every_variable_the_dag_names_is_a_setting() -> None:
    """No Variable is read by a name typed into the DAG: each comes from settings."""
    source = DAG_FILE.read_text()
    names = {s.variable for s in settings.ALL}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "var.value" in node.value:
            pytest.fail(f"the DAG builds a Variable template by hand: {node.value!r}")
    # Every documented Variable is one of the settings.
    for line in source.splitlines():
        for word in line.replace("`", " ").replace(",", " ").split():
            if word.startswith("openai_batch_") and word != "openai_batch":
                assert word in names, word


def test_templates_render_the_default_or_the_variable() -> None:
    from jinja2.nativetypes import NativeEnvironment

    env = NativeEnvironment()

    class Var:
        def __init__(self, values: dict[str, str]) -> None:
            self.value = self
            self.values = values

        def get(self, key: str, default: object = None) -> object:
            return self.values.get(key, default)

    empty = Var({})
    assert env.from_string(settings.template(settings.INBOX)).render(var=empty) == settings.INBOX.default
    assert env.from_string(settings.template(settings.CAPACITY_POLL)).render(var=empty) == 30
    ledger = env.from_string(settings.ledger_template())
    assert ledger.render(var=empty) == f"{settings.RESULTS.default}/_ledger"
    assert ledger.render(var=Var({"openai_batch_results": "/r"})) == "/r/_ledger"
    assert ledger.render(var=Var({"openai_batch_ledger_dir": "/l", "openai_batch_results": "/r"})) == "/l"


def test_the_view_finds_the_ledger_where_the_dag_puts_it() -> None:
    cases: list[dict[str, str]] = [
        {},
        {"openai_batch_results": "/r"},
        {"openai_batch_ledger_dir": "/l"},
        {"openai_batch_ledger_dir": "/l", "openai_batch_results": "/r"},
    ]
    from jinja2.nativetypes import NativeEnvironment

    for values in cases:

        class Var:
            value = None

            def get(self, key: str, default: object = None, _v: dict[str, str] = values) -> object:
                return _v.get(key, default)

        var = Var()
        var.value = var  # type: ignore[assignment]
        rendered = NativeEnvironment().from_string(settings.ledger_template()).render(var=var)
        assert settings.ledger_folder(values.get) == rendered, values
