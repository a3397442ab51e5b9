"""Validate rendered manifests against the meshes' published CRD schemas in ../shared/crds.

``crd_validator(name, version)`` loads ``openAPIV3Schema`` of one CRD version (e.g.
``"virtualservices.networking.istio.io", "v1"``) and returns a function that raises
``jsonschema.ValidationError`` for an invalid manifest. It is stricter than plain jsonschema in the
ways the API server is:

- unknown fields are errors (the API server *prunes* them silently from structural schemas, so a
  misspelt field would be lost without a word) — objects with ``properties`` are closed unless the
  schema says ``x-kubernetes-preserve-unknown-fields`` or has ``additionalProperties``;
- the top level must be exactly apiVersion (``<group>/<version>``), kind and metadata (name,
  namespace, labels, annotations) plus the schema's own fields;
- a few CEL rules (``x-kubernetes-validations``) the adapters' values touch are checked: Istio's
  ``duration(self) >= duration('1ms')``, Gateway API's "Must have port for Service reference" and
  "backendRequest timeout cannot be longer than request timeout". Other CEL rules are not evaluated.

``validate(manifest)`` finds the CRD by the manifest's apiVersion and kind in any file of the folder.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from conftest import SHARED
from workbench.backends.kubernetes.values import parse_go_duration

CRDS = SHARED / "crds"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def _crds(folder: Path = CRDS) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=_LOADER):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                out[doc["metadata"]["name"]] = doc
    return out


def crd_schema(name: str, version: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of CRD ``name`` at ``version`` (KeyError naming what exists)."""
    crds = _crds()
    if name not in crds:
        raise KeyError(f"no CRD {name} in {CRDS} (have: {', '.join(sorted(crds))})")
    versions = {v["name"]: v for v in crds[name]["spec"]["versions"]}
    if version not in versions:
        raise KeyError(f"CRD {name} has no version {version} (have: {', '.join(versions)})")
    return versions[version]["schema"]["openAPIV3Schema"]


def storage_version(name: str) -> str:
    """The version the CRD stores objects in."""
    return next(v["name"] for v in _crds()[name]["spec"]["versions"] if v.get("storage"))


def _go_seconds(text: Any) -> float | None:
    try:
        return parse_go_duration(str(text))
    except ValueError:
        return None


def _cel(validator: Any, rules: list[dict[str, Any]], instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
    for rule in rules:
        expr, message = rule.get("rule", ""), rule.get("message", "")
        if expr == "duration(self) >= duration('1ms')" and isinstance(instance, str):
            seconds = _go_seconds(instance)
            if seconds is None or seconds < 1e-3:
                yield jsonschema.ValidationError(f"{instance!r}: {message}")
        elif message == "Must have port for Service reference" and isinstance(instance, dict):
            core_service = instance.get("group", "") == "" and instance.get("kind", "Service") == "Service"
            if core_service and "port" not in instance:
                yield jsonschema.ValidationError(f"{instance!r}: {message}")
        elif message == "backendRequest timeout cannot be longer than request timeout":
            request = _go_seconds(instance.get("request", ""))
            backend = _go_seconds(instance.get("backendRequest", ""))
            if request and backend and backend > request:
                yield jsonschema.ValidationError(f"{instance!r}: {message}")


_Validator = jsonschema.validators.extend(jsonschema.Draft7Validator, {"x-kubernetes-validations": _cel})


def _close(schema: Any) -> Any:
    """Copy of ``schema`` with every object that lists properties closed to unknown fields."""
    if isinstance(schema, list):
        return [_close(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (v if k in ("default", "enum", "example") else _close(v)) for k, v in schema.items()}
    if "properties" in out:
        out["properties"] = {k: _close(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


_METADATA = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 253,
                 "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"},
        "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}  # fmt: skip


@functools.cache
def _compiled(name: str, version: str, stored: bool) -> Any:
    crd = _crds()[name]
    schema = _close(copy.deepcopy(crd_schema(name, version)))
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"const": f"{group}/{version}"}
    props["kind"] = {"const": kind}
    props["metadata"] = {"type": "object"} if stored else _METADATA
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    schema["additionalProperties"] = False
    return _Validator(schema)


def crd_validator(name: str, version: str, *, stored: bool = False) -> Callable[[dict[str, Any]], None]:
    """A function raising ``jsonschema.ValidationError`` when a manifest breaks CRD ``name``/``version``.

    ``stored=True`` accepts any metadata (objects as the API server returns them).
    """
    validator = _compiled(name, version, stored)

    def check(manifest: dict[str, Any]) -> None:
        error = jsonschema.exceptions.best_match(validator.iter_errors(manifest))
        if error is not None:
            raise error

    return check


def validate(manifest: dict[str, Any], *, stored: bool = False) -> None:
    """Validate ``manifest`` against the CRD of its apiVersion and kind."""
    group, _, version = str(manifest.get("apiVersion", "")).rpartition("/")
    kind = manifest.get("kind")
    for name, crd in _crds().items():
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind:
            crd_validator(name, version, stored=stored)(manifest)
            return
    raise KeyError(f"no CRD for {manifest.get('apiVersion')}/{kind} in {CRDS}")
