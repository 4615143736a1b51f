"""Validate JSON against OpenAI's published OpenAPI schemas (the Files + Batches subset in ``spec/``).

``spec/openai-openapi-batch-subset.json`` holds the schemas of openai/openai-openapi (its ``source`` field
names the commits). ``$ref`` resolves inside that file. As the file's ``how_to_validate`` note says, the
real service returns null for optional properties typed non-null, so a property a schema does not list
in ``required`` may also be null; required properties keep their exact types.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SPEC_PATH = Path(__file__).parent / "spec" / "openai-openapi-batch-subset.json"


def _allow_null_when_optional(node: Any) -> Any:
    if isinstance(node, list):
        return [_allow_null_when_optional(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _allow_null_when_optional(value) for key, value in node.items()}
    properties = out.get("properties")
    if isinstance(properties, dict):
        required = set(out.get("required", ()))
        out["properties"] = {
            name: schema if name in required else {"anyOf": [schema, {"type": "null"}]}
            for name, schema in properties.items()
        }
    return out


@functools.cache
def spec() -> dict[str, Any]:
    """Return the subset document as published."""
    document: dict[str, Any] = json.loads(SPEC_PATH.read_text())
    return document


@functools.cache
def _components() -> dict[str, Any]:
    schemas = _allow_null_when_optional(copy.deepcopy(spec()["components"]["schemas"]))
    return {"schemas": schemas}


@functools.cache
def validator(name: str) -> Draft202012Validator:
    """Return a validator for ``#/components/schemas/<name>``."""
    if name not in spec()["components"]["schemas"]:
        raise KeyError(f"{name} is not a schema of the spec subset")
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": _components()})


def problems(name: str, instance: Any) -> list[str]:
    """Return what makes ``instance`` invalid under schema ``name`` (empty when it is valid)."""
    errors = sorted(validator(name).iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}" for e in errors]


def is_valid(name: str, instance: Any) -> bool:
    """Return whether ``instance`` is valid under schema ``name``."""
    return validator(name).is_valid(instance)


def assert_valid(name: str, instance: Any) -> None:
    """Fail with every schema error when ``instance`` is not valid under schema ``name``."""
    found = problems(name, instance)
    assert not found, f"not a valid {name}:\n" + "\n".join(found)
