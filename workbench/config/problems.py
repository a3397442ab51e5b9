"""Invalid input as ``file:line field.path: what was expected`` — pydantic errors made readable.

``parse_model(text, Model, source)`` reads YAML with line numbers (``yamlload``), validates it
against any pydantic model and turns every validation error into a ``Problem`` that names the file,
the YAML line, the field path and what was expected, with "did you mean" hints for typos. Used
for experiments.yaml (``schema.py``) and the local mesh's topology files.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from workbench.config.yamlload import Located, YamlProblem, load_yaml
from workbench.errors import WorkbenchError
from workbench.units import show_value

__all__ = ["ConfigError", "Problem", "format_path", "parse_model"]


@dataclass(frozen=True)
class Problem:
    """One invalid input: where it is and what was expected."""

    source: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where} {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(WorkbenchError, ValueError):
    """An input file (experiments.yaml, a topology) is invalid; ``problems`` has one entry per problem."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


M = TypeVar("M", bound=BaseModel)


def parse_model(
    text: str, model: type[M], source: str, context: dict[str, Any] | None = None
) -> tuple[M, Located]:
    """Parse YAML text into ``model``; every problem becomes a located ConfigError line."""
    try:
        located = load_yaml(text)
    except YamlProblem as exc:
        raise ConfigError([Problem(source, exc.line, "", exc.message)]) from None
    data = located.data
    keys = ", ".join(model.model_fields)
    if data is None:
        raise ConfigError([Problem(source, None, "", f"file is empty; expected a mapping with keys {keys}")])
    if not isinstance(data, dict):
        message = f"top level must be a mapping with keys {keys} (got {_kind_of(data)})"
        raise ConfigError([Problem(source, 1, "", message)])
    try:
        return model.model_validate(data, context=context), located
    except ValidationError as exc:
        problems = [_problem(err, located, source, model) for err in exc.errors()]
        raise ConfigError(_dedupe(problems)) from None


def format_path(loc: Iterable[Any]) -> str:
    """``("experiments", 2, "steps")`` -> ``experiments[2].steps``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problem(err: dict[str, Any], located: Located, source: str, root: type[BaseModel]) -> Problem:
    loc = _clean_loc(err["loc"], located.data)
    kind, value = err["type"], err.get("input")
    ctx = err.get("ctx") or {}
    message: str
    if loc and loc[-1] == "[key]":  # a mapping key of the wrong type, e.g. a version written as 1
        loc = loc[:-2]
        key = err["input"]
        message = f"key {show_value(key)} must be a string" + (
            " — quote it in YAML" if not isinstance(key, str) else ""
        )
    elif kind == "invalid_key":
        key = err["input"]
        loc = loc[:-1]
        message = f"key {show_value(key)} must be a string" + (
            " — quote it in YAML" if key is not None else ""
        )
    elif kind == "missing":
        message = "required field is missing"
    elif kind == "extra_forbidden":
        message = (
            f"unknown key '{loc[-1]}'{_did_you_mean(str(loc[-1]), _allowed_keys(loc, located.data, root))}"
        )
    elif kind == "union_tag_not_found":
        field = ctx.get("discriminator", "").strip("'")
        loc = (*loc, field)
        message = f"required field is missing; one of: {', '.join(_tags(loc, root))}"
    elif kind == "union_tag_invalid":
        field = ctx.get("discriminator", "").strip("'")
        loc = (*loc, field)
        tag = str(ctx.get("tag"))
        options = _tags(loc, root)
        close = difflib.get_close_matches(tag, options, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        shown = show_value(_value_at(loc, located.data))
        if loc == ("backend", "type") and isinstance(located.data.get("backend"), str):
            loc, field, shown = (
                ("backend",),
                "backend",
                show_value(located.data["backend"]),
            )  # `backend: name`
        message = f"unknown {field} {shown}{hint}; one of: {', '.join(options)}"
    elif kind == "literal_error":
        options = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        close = (
            difflib.get_close_matches(str(value), options, n=1, cutoff=0.6) if isinstance(value, str) else []
        )
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        message = f"must be one of {', '.join(options)} (got {show_value(value)}){hint}"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[
            kind
        ]
        bound = next(iter(ctx.values()))
        message = f"must be {op} {show_value(bound)} (got {show_value(value)})"
    elif kind == "too_short":
        need = ctx.get("min_length", 1)
        message = (
            f"must have at least {need} item{'s' if need != 1 else ''} (got {ctx.get('actual_length', 0)})"
        )
    elif kind == "too_long":
        message = f"must have at most {ctx.get('max_length')} items (got {ctx.get('actual_length')})"
    elif kind in ("int_type", "int_parsing", "int_from_float"):
        message = f"must be a whole number (got {show_value(value)}{_unquote(value)})"
    elif kind == "finite_number":
        message = f"must be a finite number (got {show_value(value)})"
    elif kind in ("float_type", "float_parsing"):
        message = f"must be a number (got {show_value(value)}{_unquote(value)})"
    elif kind in ("bool_type", "bool_parsing"):
        message = f"must be true or false (got {show_value(value)})"
    elif kind == "string_type":
        quote = " — quote it in YAML" if isinstance(value, int | float | bool) else ""
        message = f"must be a string (got {show_value(value)}{quote})"
    elif kind in ("list_type", "tuple_type"):
        message = f"must be a list (got {show_value(value)})"
    elif kind in ("dict_type", "model_type", "model_attributes_type", "model_class_type"):
        message = f"must be a mapping of key: value (got {show_value(value)})"
    elif kind in ("value_error", "assertion_error"):
        message = re.sub(r"^(Value|Assertion) error, ", "", err["msg"])
    else:
        message = err["msg"][:1].lower() + err["msg"][1:]
    return Problem(source, located.line_of(loc), format_path(loc), message)


def _clean_loc(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """Drop the tag pydantic inserts after a tagged union (``experiments.2.canary.steps``)."""
    out: list[Any] = []
    node = data
    skip_tag = False
    for part in loc:
        if skip_tag and isinstance(node, dict) and part in (node.get("kind"), node.get("type"), "str"):
            skip_tag = False
            continue
        skip_tag = False
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
        skip_tag = tuple(out) == ("backend",) or (
            len(out) == 2 and out[0] == "experiments" and isinstance(out[1], int)
        )
    return tuple(out)


def _value_at(loc: tuple[Any, ...], data: Any) -> Any:
    for part in loc:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def _unwrap(tp: Any, node: Any) -> Any:
    """Strip Annotated/Optional and pick the union member that ``node`` selects by tag."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
            continue
        if origin is Union or str(origin) == "types.UnionType":
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
            for member in members:
                if isinstance(member, type) and issubclass(member, BaseModel) and isinstance(node, dict):
                    for tag_field in ("kind", "type"):
                        f = member.model_fields.get(tag_field)
                        if f is not None and node.get(tag_field) in get_args(f.annotation):
                            return member
            return None
        return tp


def _allowed_keys(loc: tuple[Any, ...], data: Any, root: type[BaseModel]) -> list[str]:
    tp: Any = root
    node = data
    if isinstance(node, dict) and isinstance(node.get("backend"), str):
        node = {**node, "backend": {"type": node["backend"]}}
    for part in loc[:-1]:
        tp = _unwrap(tp, node)
        if tp is None:
            return []
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return []
            tp = field.annotation
        elif get_origin(tp) in (list, dict):
            tp = get_args(tp)[-1]
        else:
            return []
        node = (
            node.get(part)
            if isinstance(node, dict)
            else (
                node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None
            )
        )
    tp = _unwrap(tp, node)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _tags(loc: tuple[Any, ...], root: type[BaseModel]) -> list[str]:
    """The tags of the tagged union whose discriminator ``loc`` names (``backend.type`` ->
    local, kubernetes; ``experiments[i].kind`` -> the experiment kinds), read off ``root``."""
    field = root.model_fields.get(loc[0]) if loc and isinstance(loc[0], str) else None
    if field is None:
        return []
    tp: Any = field.annotation
    while get_origin(tp) in (Annotated, list):
        tp = get_args(tp)[0]
    members = get_args(tp) if get_origin(tp) is Union or str(get_origin(tp)) == "types.UnionType" else (tp,)
    tags: list[str] = []
    for member in members:
        if isinstance(member, type) and issubclass(member, BaseModel) and loc[-1] in member.model_fields:
            tags += [str(t) for t in get_args(member.model_fields[loc[-1]].annotation)]
    return tags


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    if options:
        return f"; expected one of: {', '.join(options)}"
    return ""


def _unquote(value: Any) -> str:
    return " — write numbers without quotes" if isinstance(value, str) and _is_number(value) else ""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[str] = set()
    out = []
    for p in problems:
        if str(p) not in seen:
            seen.add(str(p))
            out.append(p)
    return out


def _kind_of(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the text {show_value(value)}"
    return f"the value {show_value(value)}"
