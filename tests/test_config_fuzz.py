"""Random mutations of a valid experiments.yaml never escape as anything but ConfigError."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO
from workbench import config
from workbench.config import ConfigError

VALID_TEXT = (REPO / "experiments.yaml").read_text()
VALID_DATA = yaml.safe_load(VALID_TEXT)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["5s", "-1s", "v1", "v2", "local", "kubernetes", "canary", "100", "1e9", "ms", ""]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


ALL_PATHS = _paths(VALID_DATA)


def _check(text: str) -> None:
    try:
        config.loads(text, source="fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems, "a ConfigError must name at least one problem"
        for problem in exc.problems:
            line = str(problem)
            assert line.startswith("fuzz.yaml") and problem.message.strip()
            assert "Traceback" not in line


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(ALL_PATHS),
    action=st.sampled_from(["replace", "delete", "add"]),
    value=values,
    key=st.text(max_size=10),
)
def test_structural_mutations(path: tuple, action: str, value: Any, key: str) -> None:
    data = yaml.safe_load(VALID_TEXT)
    parent, last = (None, None) if not path else (_get(data, path[:-1]), path[-1])
    if action == "replace":
        data = value if parent is None else _set(parent, last, value) or data
    elif action == "delete" and parent is not None:
        del parent[last]
    elif action == "add":
        target = _get(data, path)
        if isinstance(target, dict):
            target[key] = value
        elif isinstance(target, list):
            target.append(value)
    _check(yaml.safe_dump(data, allow_unicode=True))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.integers(min_value=0, max_value=len(VALID_TEXT)),
    length=st.integers(min_value=0, max_value=40),
    insert=st.text(alphabet=st.sampled_from(list(" -:[]{},#&*!|>'\"%@`\t\n0123456789abcvxyz")), max_size=12),
)
def test_text_mutations(start: int, length: int, insert: str) -> None:
    _check(VALID_TEXT[:start] + insert + VALID_TEXT[start + length :])


def _get(node: Any, path: tuple) -> Any:
    for part in path:
        node = node[part]
    return node


def _set(parent: Any, key: Any, value: Any) -> None:
    parent[key] = value
