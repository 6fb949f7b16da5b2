"""Typed DAG params: the JSON schema a param may declare, and the check of a trigger's
conf against it.

A DAG's `params` are template values (`{{ params.table }}`) that a trigger's conf
overrides; a conf value lands in a shell command as easily as a default does. A
param may therefore declare a JSON schema (`param_schemas`, written in DAG files as
`Param("orders", type="string", enum=[...])`, after Airflow) that the effective
value must satisfy: checked when the spec is validated (the schema itself, and the
default) and when a run is created (the operation, before proposing, and apply).

Who calls: `core.spec` (`check_schemas`), `core.handlers_dags.create_run` and
`api.operations.trigger` (`conf_error`). Pure and deterministic, so apply may call
it: only keywords whose cost is linear in the value are allowed (no `$ref`, which
could reach the network, no `uniqueItems`, no `patternProperties`), and `pattern`
is matched with RE2 (linear time, no catastrophic backtracking: the pattern and
the conf both come from users, and apply runs on the Raft thread).
"""

from __future__ import annotations

import functools
from typing import Any, Iterator

import re2
import referencing
from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.exceptions import SchemaError, best_match

from .limits import clip

# The keywords a param's schema may use (JSON Schema 2020-12 names).
KEYWORDS = frozenset({
    "type", "enum", "const", "pattern", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "multipleOf", "items", "prefixItems", "minItems", "maxItems", "properties", "required",
    "additionalProperties", "minProperties", "maxProperties", "allOf", "anyOf", "oneOf", "not",
    "title", "description", "examples",
})
_ONE_SUBSCHEMA = ("items", "additionalProperties", "not")
_SUBSCHEMA_LISTS = ("prefixItems", "allOf", "anyOf", "oneOf")
MESSAGE_CHARS = 200


class ParamError(ValueError):
    """A param schema, or a value checked against one, is wrong; the message says which."""


@functools.lru_cache(maxsize=512)
def _regex(pattern: str) -> Any:
    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options)


def _pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    """The `pattern` keyword, with RE2 instead of Python's backtracking `re`."""
    if validator.is_type(instance, "string") and not _regex(pattern).search(instance):
        yield ValidationError(f"{clip(instance)} does not match {clip(pattern)}")


_Validator = validators.extend(Draft202012Validator, {"pattern": _pattern})
_NO_REMOTE = referencing.Registry()     # `$ref` is refused anyway: nothing is ever fetched


def check_schemas(schemas: Any, params: dict[str, Any], has_schedule: bool, where: str) -> dict[str, dict[str, Any]]:
    """`schemas` ({param: JSON schema}) if every schema is valid, uses only KEYWORDS
    and accepts its param's default; a param without a default (required at trigger)
    only in a DAG without a schedule (its scheduled runs would have no value). The
    caller has bounded `schemas`' depth and size (core.limits). Raises ParamError."""
    if not isinstance(schemas, dict) or not all(isinstance(s, dict) for s in schemas.values()):
        raise ParamError(f"{where}: param_schemas must map param names to JSON schemas (objects)")
    for name, schema in schemas.items():
        what = f"{where}: the schema of param {clip(name)}"
        _check_keywords(schema, what)
        try:
            _Validator.check_schema(schema)
        except SchemaError as e:
            raise ParamError(f"{what} is not a valid JSON schema: {_clip_message(e.message)}") from None
        for pattern in _patterns(schema):
            try:
                _regex(pattern)
            except re2.error as e:
                raise ParamError(f"{what}: pattern {clip(pattern)} is not an RE2 regular expression ({e}); "
                                 "backreferences and lookaround are not supported") from None
        if name in params:
            error = _value_error(name, schema, params[name])
            if error:
                raise ParamError(f"{where}: the default of {error}")
        elif has_schedule:
            raise ParamError(f"{where}: param {clip(name)} has no default, so its scheduled runs would have no "
                             "value: give it a default, or make the DAG manual-only (schedule=None)")
    return schemas


def conf_error(schemas: dict[str, dict[str, Any]], params: dict[str, Any], conf: dict[str, Any]) -> str | None:
    """Why the params a run with `conf` would see (`params` overridden by `conf`) break
    their schemas, or None. Deterministic; cost linear in conf and schemas."""
    for name in sorted(schemas):
        if name in conf:
            value = conf[name]
        elif name in params:
            value = params[name]
        else:
            return f"param {clip(name)} is required (it has no default): give it in the conf"
        error = _value_error(name, schemas[name], value)
        if error:
            return f"conf: {error}"
    return None


def _value_error(name: str, schema: dict[str, Any], value: Any) -> str | None:
    validator = _Validator(schema, registry=_NO_REMOTE)
    error = best_match(validator.iter_errors(value))
    if error is None:
        return None
    return f"param {clip(name)} = {clip(value)} does not satisfy its schema: {_clip_message(error.message)}"


def _clip_message(message: str) -> str:
    return message if len(message) <= MESSAGE_CHARS else f"{message[:MESSAGE_CHARS]}..."


def _subschemas(schema: dict[str, Any]) -> Iterator[Any]:
    for key in _ONE_SUBSCHEMA:
        if key in schema:
            yield schema[key]
    for key in _SUBSCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            yield from schema[key]
    if isinstance(schema.get("properties"), dict):
        yield from schema["properties"].values()


def _walk(schema: Any) -> Iterator[dict[str, Any]]:
    """Every (sub)schema object in `schema`, iteratively."""
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(_subschemas(item))


def _check_keywords(schema: dict[str, Any], what: str) -> None:
    for sub in _walk(schema):
        unknown = sorted(k for k in sub if k not in KEYWORDS)
        if unknown:
            raise ParamError(f"{what} uses {', '.join(clip(k) for k in unknown[:3])}; a param schema may use only: "
                             f"{', '.join(sorted(KEYWORDS))}")


def _patterns(schema: dict[str, Any]) -> Iterator[str]:
    for sub in _walk(schema):
        if isinstance(sub.get("pattern"), str):
            yield sub["pattern"]
