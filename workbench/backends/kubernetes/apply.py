"""Reads and writes of Kubernetes objects, as a real API server expects them.

Writes are server-side apply (``PATCH`` with ``application/apply-patch+yaml``, ``fieldManager=
mesh-workbench``, ``force`` only when asked), so the workbench owns exactly the fields it sets and
another manager's fields (Flagger, Argo CD) are a 409 conflict rather than silently overwritten.
``dry_run=True`` sends nothing and returns the exact manifest that would be applied; ``server_dry_run``
asks the API server to validate without persisting (``dryRun=All``). Every write is recorded (for the
audit log) through ``on_write``. API errors become ``KubernetesError`` with a sentence naming the
object, the context and the likely cause (RBAC, a missing CRD, a conflict, an invalid field).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from workbench.backends.base import BackendError
from workbench.tools import redact_url

FIELD_MANAGER = "mesh-workbench"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class Resource:
    """One API resource type: where it lives and which product brings its CRD."""

    group: str  # "" for the core API
    version: str
    plural: str
    kind: str
    product: str = "Kubernetes"  # named in "<product> is not installed" errors
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def path(self, namespace: str | None, name: str | None = None) -> str:
        """The REST path, e.g. /apis/networking.istio.io/v1/namespaces/shop/virtualservices/reviews."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced:
            if not namespace:
                raise ValueError(f"{self.kind} is namespaced: a namespace is needed")
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


@dataclass
class WriteRecord:
    """One write the workbench made (or would make, in a dry run)."""

    time: str
    context: str
    verb: str  # apply | merge-patch | delete
    kind: str
    api_version: str
    namespace: str | None
    name: str
    dry_run: bool
    body: Any = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class KubernetesError(BackendError):
    """An API request that failed, explained; ``status`` is the HTTP status (0: unreachable)."""

    def __init__(self, message: str, status: int = 0, reason: str = ""):
        super().__init__(message)
        self.status = status
        self.reason = reason


class CRDMissing(KubernetesError):
    """The resource type does not exist in the cluster (its product is not installed)."""


@dataclass
class Writer:
    """Reads and writes objects through one ``kubernetes.client.ApiClient``; see the module docstring."""

    api_client: Any
    context: str = "(in-cluster)"
    dry_run: bool = False
    server_dry_run: bool = False
    force: bool = False
    timeout_s: float = 30.0  # a server that drops packets must not hang an experiment
    on_write: Callable[[WriteRecord], None] | None = None
    records: list[WriteRecord] = field(default_factory=list)

    # -----------------------------------------------------------------------------------------
    # Writes

    def apply(self, res: Resource, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply ``manifest``; returns the object as stored (or the manifest in a dry run)."""
        meta = manifest.get("metadata") or {}
        name, namespace = meta.get("name"), meta.get("namespace")
        if not name:
            raise ValueError(f"{res.kind} manifest has no metadata.name")
        if manifest.get("kind") != res.kind or manifest.get("apiVersion") != res.api_version:
            raise ValueError(
                f"manifest is {manifest.get('apiVersion')}/{manifest.get('kind')}, expected "
                f"{res.api_version}/{res.kind}"
            )
        self._record("apply", res, namespace, name, manifest)
        if self.dry_run:
            return manifest
        query = self._write_query()
        query.append(("force", "true" if self.force else "false"))
        return self._request("PATCH", res, namespace, name, query, manifest, APPLY_PATCH)

    def merge_patch(
        self, res: Resource, namespace: str | None, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """JSON merge patch (RFC 7386) of an existing object."""
        self._record("merge-patch", res, namespace, name, patch)
        if self.dry_run:
            return patch
        return self._request("PATCH", res, namespace, name, self._write_query(), patch, MERGE_PATCH)

    def delete(self, res: Resource, namespace: str | None, name: str, missing_ok: bool = True) -> None:
        """Delete an object (a missing one is fine unless ``missing_ok`` is False)."""
        self._record("delete", res, namespace, name, None)
        if self.dry_run:
            return
        query = [("dryRun", "All")] if self.server_dry_run else []
        try:
            self._request("DELETE", res, namespace, name, query, {"propagationPolicy": "Background"},
                          "application/json")  # fmt: skip
        except KubernetesError as exc:
            if not (missing_ok and exc.status == 404 and not isinstance(exc, CRDMissing)):
                raise

    # -----------------------------------------------------------------------------------------
    # Reads

    def get(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist (CRDMissing when its type does not)."""
        try:
            return self._request("GET", res, namespace, name, [], None, None)
        except KubernetesError as exc:
            if exc.status == 404 and not isinstance(exc, CRDMissing):
                return None
            raise

    def list(
        self, res: Resource, namespace: str | None = None, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        """Objects of a type (in ``namespace``, or cluster-wide when None for a namespaced type)."""
        query = [("labelSelector", label_selector)] if label_selector else []
        if res.namespaced and namespace is None:
            base = f"/apis/{res.group}/{res.version}" if res.group else f"/api/{res.version}"
            doc = self._raw("GET", f"{base}/{res.plural}", query, None, None, res, None, "")
        else:
            doc = self._request("GET", res, namespace, None, query, None, None)
        return list(doc.get("items") or [])

    # -----------------------------------------------------------------------------------------
    # Internals

    def _write_query(self) -> list[tuple[str, str]]:
        query = [("fieldManager", FIELD_MANAGER)]
        if self.server_dry_run:
            query.insert(0, ("dryRun", "All"))
        return query

    def _record(self, verb: str, res: Resource, namespace: str | None, name: str, body: Any) -> None:
        record = WriteRecord(datetime.now(UTC).isoformat(), self.context, verb, res.kind, res.api_version,
                             namespace, name, self.dry_run or self.server_dry_run, body)  # fmt: skip
        self.records.append(record)
        if self.on_write is not None:
            self.on_write(record)

    def _request(
        self, method: str, res: Resource, namespace: str | None, name: str | None,
        query: list[tuple[str, str]], body: Any, content_type: str | None,
    ) -> dict[str, Any]:  # fmt: skip
        return self._raw(
            method, res.path(namespace, name), query, body, content_type, res, namespace, name or ""
        )

    def _raw(
        self, method: str, path: str, query: list[tuple[str, str]], body: Any, content_type: str | None,
        res: Resource, namespace: str | None, name: str,
    ) -> dict[str, Any]:  # fmt: skip
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            method_, url, header_params, body_, _ = self.api_client.param_serialize(
                method=method, resource_path=path, query_params=query, header_params=headers, body=body,
                auth_settings=["BearerToken"],
            )  # fmt: skip
            response = self.api_client.call_api(
                method_, url, header_params=header_params, body=body_, _request_timeout=self.timeout_s
            )
            response.read()
            if not 200 <= response.status <= 299:
                raise ApiException(http_resp=response)
            text = response.data.decode("utf-8") if response.data else ""
        except ApiException as exc:
            raise _explain(exc, method, res, namespace, name, self.context) from None
        except (HTTPError, OSError) as exc:
            host = redact_url(str(getattr(self.api_client.configuration, "host", "?")))
            raise KubernetesError(
                f"cannot reach the Kubernetes API server of context {self.context} at {host}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        return json.loads(text) if text else {}


def _status_message(exc: Any) -> tuple[str, dict[str, Any]]:
    try:
        doc = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return (str(exc.body or exc.reason or "").strip(), {})
    if not isinstance(doc, dict):
        return (str(doc), {})
    return (str(doc.get("message") or exc.reason or "").strip(), doc)


def _explain(
    exc: Any, method: str, res: Resource, namespace: str | None, name: str, context: str
) -> KubernetesError:
    """A sentence for an ApiException: what was attempted, on what, and the likely cause."""
    status = int(exc.status or 0)
    message, doc = _status_message(exc)
    what = f"{res.kind} {namespace + '/' if namespace else ''}{name}".rstrip("/ ")
    verb = {"GET": "read", "PATCH": "write", "DELETE": "delete", "POST": "create"}.get(method, method)
    reason = str(doc.get("reason") or exc.reason or "")
    if status == 404:
        details = doc.get("details") or {}
        object_missing = bool(details.get("name")) or (name and f'"{name}" not found' in message)
        if not object_missing:
            return CRDMissing(
                f"{res.product} is not installed in context {context}: {res.kind} CRD not found "
                f"({res.crd_name}, {res.api_version})", status, reason,
            )  # fmt: skip
        return KubernetesError(f"{what} not found in context {context}", status, reason)
    if status == 403:
        return KubernetesError(
            f"forbidden: the workbench's identity may not {verb} {res.crd_name} in "
            f"{'namespace ' + namespace if namespace else 'the cluster'} (context {context}; RBAC — see "
            f"deploy/rbac.yaml): {message}", status, reason,
        )  # fmt: skip
    if status == 401:
        return KubernetesError(
            f"unauthorized: context {context} has no valid credentials: {message}", status, reason
        )
    if status == 409:
        return KubernetesError(
            f"conflict writing {what} (context {context}): {message}. Another field manager owns these "
            "fields; the workbench does not take them over unless forced (force=True)", status, reason,
        )  # fmt: skip
    if status == 422:
        causes = "; ".join(
            f"{c.get('field', '?')}: {c.get('message', '')}"
            for c in (doc.get("details") or {}).get("causes") or []
        )
        return KubernetesError(f"{what} is invalid (context {context}): {causes or message}", status, reason)
    return KubernetesError(
        f"{verb} {what} failed in context {context}: HTTP {status} {message}", status, reason
    )
