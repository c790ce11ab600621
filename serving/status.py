"""Health, models and versions of a running Triton server (gRPC)."""

from __future__ import annotations

from cycada.errors import ServingError
from cycada.grpc_security import GrpcSecurity


def server_status(url: str, timeout: float = 5.0, security: GrpcSecurity | None = None) -> str:
    """A short report: live/ready, then one line per model version with its state."""
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
    lines = [
        f"server {url}: Triton {metadata.get('version', '?')}, "
        f"live={'yes' if live else 'no'}, ready={'yes' if ready else 'no'}"
    ]
    for model in sorted(index.get("models", []), key=lambda m: (m["name"], m.get("version", ""))):
        state = model.get("state", "?")
        reason = f" ({model['reason']})" if model.get("reason") else ""
        lines.append(
            f"  {model['name']:<18} version {model.get('version', '-'):<3} {state}{reason}"
        )
    return "\n".join(lines)
