"""deploy/: the Dockerfiles pass hadolint, the manifests validate against the Kubernetes schemas
(offline), and the image, ports, probe and metrics paths they name are the ones the server
really uses. No image can be pulled or built here."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from cycada.export.runtime import CONTAINER_IMAGE, EMBEDDED_TRITON, default_pythons
from cycada.serving.server import ServerOptions
from tests.helpers import REPO, DirectServer, StubEnvironment, served_copy

DEPLOY = REPO / "deploy"
KUBERNETES = "1.30.0"


def _documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if doc]


def _kind(name: str, kind: str) -> dict:
    return next(doc for doc in _documents(name) if doc["kind"] == kind)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "client.Dockerfile"])
def test_dockerfiles_pass_hadolint(dockerfile):
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run([str(hadolint), str(DEPLOY / dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", ["triton.yaml", "translate-job.yaml"])
def test_manifests_validate_against_the_kubernetes_schemas(name):
    for document in _documents(name):
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_the_kserve_service_names_the_triton_runtime_with_a_valid_container():
    """KServe's schema is not bundled: its Triton predictor's container part (args,
    resources) is checked as a Kubernetes container, the rest field by field."""
    service = _documents("kserve.yaml")[0]
    assert (service["apiVersion"], service["kind"]) == (
        "serving.kserve.io/v1beta1",
        "InferenceService",
    )
    triton = dict(service["spec"]["predictor"]["triton"])
    assert triton.pop("runtimeVersion") == CONTAINER_IMAGE.rsplit(":", 1)[1]
    assert re.fullmatch(r"(s3|gs|pvc)://\S+", triton.pop("storageUri"))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kserve-predictor"},
        "spec": {"containers": [{"name": "kserve-container", "image": CONTAINER_IMAGE, **triton}]},
    }
    kubernetes_validate.validate(pod, KUBERNETES, strict=True)
    assert service["spec"]["predictor"]["minReplicas"] >= 2


def _flags(args: list[str]) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in args if arg.startswith("--") and "=" in arg)


def test_the_image_and_manifests_agree_with_the_server_they_name():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"FROM {CONTAINER_IMAGE}\n" in dockerfile
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", dockerfile, re.M).group(1).split()}
    defaults = ServerOptions(Path("."))
    assert exposed == {defaults.http_port, defaults.grpc_port, defaults.metrics_port}
    deployment = _kind("triton.yaml", "Deployment")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == CONTAINER_IMAGE
    flags = _flags(container["args"])
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {
        "http": int(flags["http-port"]),
        "grpc": int(flags["grpc-port"]),
        "metrics": int(flags["metrics-port"]),
    }
    assert flags["model-config-name"] in ("onnxruntime", "tensorrt")
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert flags["model-repository"] == mounts["models"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert deployment["spec"]["replicas"] >= 2
    for probe, path in (
        ("livenessProbe", "/v2/health/live"),
        ("readinessProbe", "/v2/health/ready"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    service = _kind("triton.yaml", "Service")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    claim = pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert _kind("triton.yaml", "PersistentVolumeClaim")["metadata"]["name"] == claim


def test_the_translation_job_runs_one_shard_per_index_against_the_service():
    job = _kind("translate-job.yaml", "Job")
    assert job["spec"]["completionMode"] == "Indexed"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    words = shlex.split(container["args"][0])
    assert words[:3] == ["exec", "cycada", "translate-dir"]
    shard = words[words.index("--shard") + 1]
    assert shard == f"${{JOB_COMPLETION_INDEX}}/{job['spec']['completions']}"
    service = _kind("triton.yaml", "Service")
    grpc = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert words[words.index("--url") + 1] == f"{service['metadata']['name']}:{grpc}"
    from cycada.cli import build_parser

    command = [w.replace("${JOB_COMPLETION_INDEX}", "3") for w in words[2:]]
    build_parser().parse_args(command)  # today's command line takes it


@pytest.mark.slow
@pytest.mark.server
def test_the_deployments_server_answers_its_probes_and_frees_a_killed_ones_memory(
    tmp_path, exported_repository
):
    """The Deployment's own container arguments (its shell, then the server's arguments with
    the repository and ports swapped for this machine's; the native profile exists only in
    NVIDIA's container) on the embedded tritonserver: the probes' paths answer 200, the scraped
    path serves Triton's metrics, and a server killed with SIGKILL and started again, as a
    container restarted in its pod, finds its /dev/shm freed of what the dead one left."""
    from tests.helpers import skip_without_tritonserver

    skip_without_tritonserver()
    repository = served_copy(exported_repository, tmp_path)
    (container,) = _kind("triton.yaml", "Deployment")["spec"]["template"]["spec"]["containers"]
    shell = container["args"][: container["args"].index("tritonserver")]
    kept = [
        arg
        for arg in container["args"][len(shell) + 1 :]
        if not arg.startswith(("--model-repository", "--model-config-name", "--http-port",
                               "--grpc-port", "--metrics-port"))
    ]  # fmt: skip
    prefix = _flags(kept)["backend-config"].removeprefix("python,shm-region-prefix-name=")
    shm = Path("/dev/shm")

    def regions() -> set[Path]:
        return {entry for entry in shm.iterdir() if entry.name.startswith(prefix)}

    def start() -> DirectServer:
        return DirectServer(
            repository, StubEnvironment.embedded(), *kept, "--model-control-mode=explicit",
            "--load-model=segment", launch=shell,
        )  # fmt: skip

    server = start()
    try:
        for probe in ("livenessProbe", "readinessProbe"):
            path = container[probe]["httpGet"]["path"]
            with urllib.request.urlopen(f"http://127.0.0.1:{server.http}{path}") as answer:
                assert answer.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http}/v2") as answer:
            assert yaml.safe_load(answer.read())["version"] == EMBEDDED_TRITON
        scraped = _kind("triton.yaml", "Deployment")["spec"]["template"]["metadata"]["annotations"]
        url = f"http://127.0.0.1:{server.metrics}{scraped['prometheus.io/path']}"
        with urllib.request.urlopen(url) as answer:
            assert (
                'nv_inference_request_success{model="segment",version="1"}'
                in answer.read().decode()
            )
        # the shell became the server: in the pod it is the process the kubelet's SIGTERM reaches
        assert Path(f"/proc/{server.process.pid}/exe").resolve().name == "tritonserver"
        left = regions()
        assert left, f"the server named no region {prefix}* in /dev/shm"
        server.process.kill()
        server.stop()  # reaps it, and its stubs if they outlived it
        assert all(region.exists() for region in left)  # Triton frees them only when it stops
        server = start()
        assert not left & regions()
    finally:
        server.stop()
        for region in regions():  # a failed run's, on a machine that runs the tests again
            region.unlink(missing_ok=True)


@pytest.mark.parametrize(
    "text,message",
    [
        ("kind: Deployment\nspec: [1, 2\n", "not valid YAML (expected ',' or ']', but got"),
        ("kind: Deployment\nspec: [1, 2]\n", "runs no tritonserver"),
        ("kind: Pod\nspec:\n  containers: [7, {args: 3}]\n", "runs no tritonserver"),
        ("kind: InferenceService\nspec: {predictor: {triton: 1}}\n", "runs no tritonserver"),
        ("- 1\n- 2\n", "runs no tritonserver"),
    ],
)
def test_deploy_check_names_a_manifest_it_cannot_read_in_one_line(tmp_path, text, message):
    from tests.helpers import cycada, one_line_error

    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(text)
    done = cycada("deploy-check", "--repository", str(tmp_path), str(manifest))
    one_line_error(done, f"manifest {manifest}", message)
    done = cycada("deploy-check", "--repository", str(tmp_path), str(tmp_path / "none.yaml"))
    one_line_error(done, "none.yaml: cannot be read (No such file or directory)")


@pytest.mark.slow
def test_deploy_check_passes_the_manifests_and_names_what_would_not_serve(
    tmp_path, exported_repository
):
    from tests.helpers import cycada

    repository = served_copy(exported_repository, tmp_path)
    manifests = [str(DEPLOY / "kubernetes" / name) for name in ("triton.yaml", "kserve.yaml")]
    done = cycada("deploy-check", "--repository", str(repository), *manifests)
    assert done.returncode == 0, done.stderr
    assert "Python 3.10: segment (onnxruntime), segment_encoded (python)" in done.stdout

    def check(**change):
        deployment = _kind("triton.yaml", "Deployment")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        container["args"] = [*change.get("replace", container["args"]), *change.get("args", [])]
        container["image"] = change.get("image", container["image"])
        manifest = tmp_path / "manifest.yaml"
        manifest.write_text(yaml.safe_dump(deployment))
        return cycada("deploy-check", "--repository", str(repository), str(manifest))

    def failure(**change) -> str:
        done = check(**change)
        assert done.returncode == 2 and done.stdout == ""
        (line,) = done.stderr.strip().splitlines()  # one line naming every problem
        return line

    line = failure(
        args=["--model-control-mode=explicit", "--load-model=segment", "--load-model=nope"]
    )
    assert "names model 'nope', not in" in line
    line = failure(image="nvcr.io/nvidia/tritonserver:25.01-py3")
    carried = ", ".join(default_pythons())
    assert f"carries packages for Python {carried}, the server there runs 3.12" in line
    (repository / "segment" / "1" / "model.onnx").chmod(0o600)
    assert "not readable by other users" in failure()
    (repository / "segment" / "1" / "model.onnx").chmod(0o644)
    # the tensorrt profile without plans: every model falls back to its Python config
    done = check(
        replace=["tritonserver", "--model-repository=/models", "--model-config-name=tensorrt"]
    )
    assert done.returncode == 0, done.stderr
    assert "profile tensorrt, Python 3.10: segment (python)" in done.stdout
    # the server's arguments inside a shell's script, as a manifest of one's own may have them
    script = "rm -f /dev/shm/x_*; exec tritonserver --model-repository=/models"
    done = check(replace=["/bin/sh", "-c", f"{script} --model-config-name=tensorrt"])
    assert done.returncode == 0, done.stderr
    assert "profile tensorrt, Python 3.10: segment (python)" in done.stdout
