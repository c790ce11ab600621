"""Health, models and versions of a running Triton server (gRPC)."""

from __future__ import annotations

from cycada.errors import ServingError


def server_status(url: str, timeout: float = 5.0) -> str:
    """A short report: live/ready, then one line per model version with its state."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    try:
        client = grpcclient.InferenceServerClient(url)
        live = client.is_server_live(client_timeout=timeout)
        ready = client.is_server_ready(client_timeout=timeout)
        index = client.get_model_repository_index(as_json=True, client_timeout=timeout)
        metadata = client.get_server_metadata(as_json=True, client_timeout=timeout)
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
