"""Health, models and versions of a running Triton server (gRPC)."""

from __future__ import annotations

from cycada.errors import ServingError
from cycada.grpc_security import GrpcSecurity


def server_state(url: str, timeout: float = 5.0, security: GrpcSecurity | None = None) -> dict:
    """``{"url", "version", "live", "ready", "models": [{"name", "version", "state",
    "reason"}]}`` of the server at ``url``."""
    # tritonclient takes a second to import: only when a server is called
    from tritonclient.utils import InferenceServerException

    security = security or GrpcSecurity()
    headers = security.headers
    try:
        client = security.client(url)
        live = client.is_server_live(headers=headers, client_timeout=timeout)
        ready = client.is_server_ready(headers=headers, client_timeout=timeout)
        index = client.get_model_repository_index(
            headers=headers, as_json=True, client_timeout=timeout
        )
        metadata = client.get_server_metadata(headers=headers, as_json=True, client_timeout=timeout)
    except InferenceServerException as exc:
        raise ServingError(f"no Triton server answers at {url} ({exc.message()})") from None
    models = [
        {
            "name": model["name"],
            "version": model.get("version", ""),
            "state": model.get("state", "?"),
            "reason": model.get("reason", ""),
        }
        for model in sorted(
            index.get("models", []), key=lambda m: (m["name"], m.get("version", ""))
        )
    ]
    return {
        "url": url,
        "version": metadata.get("version", "?"),
        "live": bool(live),
        "ready": bool(ready),
        "models": models,
    }


def servers_states(urls: list[str], security: GrpcSecurity | None = None) -> list[dict]:
    """:func:`server_state` of each server; one that does not answer is ``{"url", "live":
    False, "ready": False, "models": [], "error"}``, so the others are still reported."""
    states = []
    for url in urls:
        try:
            states.append(server_state(url, security=security))
        except ServingError as exc:
            states.append(
                {"url": url, "live": False, "ready": False, "models": [], "error": str(exc)}
            )
    return states


def server_status(url: str, timeout: float = 5.0, security: GrpcSecurity | None = None) -> str:
    """A short report: live/ready, then one line per model version with its state."""
    return status_text(server_state(url, timeout, security))


def status_text(state: dict) -> str:
    """:func:`server_state`'s (or :func:`servers_states`') report as text."""
    if "error" in state:
        return f"server {state['url']}: DOWN, {state['error']}"
    url = state["url"]
    lines = [
        f"server {url}: Triton {state['version']}, "
        f"live={'yes' if state['live'] else 'no'}, ready={'yes' if state['ready'] else 'no'}"
    ]
    for model in state["models"]:
        reason = f" ({model['reason']})" if model["reason"] else ""
        lines.append(
            f"  {model['name']:<18} version {model['version'] or '-':<3} {model['state']}{reason}"
        )
    return "\n".join(lines)
