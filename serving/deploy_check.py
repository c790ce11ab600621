"""`cycada deploy-check --repository DIR [MANIFEST...]`: will this repository serve where it
is deployed?

A manifest (a Kubernetes Deployment, Job or Pod running ``tritonserver``, or a KServe
InferenceService with the Triton runtime) names the image, the profile (``--model-config-name``)
and perhaps the models to load (``--load-model``). For each, and for the embedded server without
manifests, every model must load there:

* the profile's config (``configs/P.pbtxt``, else ``config.pbtxt``) names a file every version
  has (``model.onnx``, ``model.plan``), or is a Python-backend config whose versions carry their
  runtime for the Python of the image's backend stub;
* a model the manifest names exists;
* every file is readable by other users (the container's server runs as its own user).
"""

from __future__ import annotations

import json
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cycada.errors import DataError

NATIVE_FILES = {"onnxruntime": "model.onnx", "tensorrt_plan": "model.plan"}


@dataclass
class Target:
    """Where a repository is to be served: what a manifest says (or the embedded server)."""

    where: str
    image: str = ""
    profile: str = "default"
    models: list[str] = field(default_factory=list)  # --load-model names; empty: all

    @property
    def python(self) -> str:
        """The Python of the image's backend stub: NVIDIA's 23.xx-24.xx images run Ubuntu
        22.04's 3.10, later ones 3.12; the embedded server runs this interpreter's."""
        release = re.search(r"tritonserver:(\d\d)\.\d\d", self.image) or re.fullmatch(
            r"(\d\d)\.\d\d-py3", self.image
        )
        if release is None:
            return f"{sys.version_info.major}.{sys.version_info.minor}"
        return "3.10" if int(release.group(1)) <= 24 else "3.12"


def _words(arguments: list) -> list[str]:
    """A container's command and arguments as words: a shell's script (``sh -c "...; exec
    tritonserver ..."``) split like the rest."""
    return [word for argument in arguments for word in str(argument).split()]


def _flags(arguments: list[str]) -> tuple[str, list[str]]:
    words = _words(arguments)
    profile = next((w.split("=", 1)[1] for w in words if w.startswith("--model-config-name=")), "")
    models = [w.split("=", 1)[1] for w in words if w.startswith("--load-model=")]
    return profile or "default", models


def _field(node, *keys):
    """``node[k1][k2]...``, or None where a level is missing or not a mapping."""
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _listed(value) -> list:
    return value if isinstance(value, list) else []


def manifest_targets(path: Path) -> list[Target]:
    """The tritonservers a manifest runs; an error names a manifest that runs none."""
    # yaml: only when manifests are given
    import yaml

    from cycada.configs import yaml_problem

    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    except OSError as exc:
        raise DataError(f"manifest {path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise DataError(f"manifest {path}: not valid YAML ({yaml_problem(exc)})") from None
    targets = []
    for document in documents:
        name = f"{path} ({document.get('kind')} {_field(document, 'metadata', 'name')})"
        triton = _field(document, "spec", "predictor", "triton")
        if document.get("kind") == "InferenceService" and isinstance(triton, dict):
            profile, models = _flags(_listed(triton.get("args")))
            targets.append(Target(name, str(triton.get("runtimeVersion", "")), profile, models))
            continue
        spec = document.get("spec")
        pod = (
            _field(spec, "jobTemplate", "spec", "template", "spec")  # a CronJob
            or _field(spec, "template", "spec")  # a Deployment, Job, StatefulSet
            or spec  # a Pod
        )
        for container in _listed(_field(pod, "containers")):
            if not isinstance(container, dict):
                continue
            words = _words([*_listed(container.get("command")), *_listed(container.get("args"))])
            if any(word.split("/")[-1] == "tritonserver" for word in words):
                profile, models = _flags(words)
                targets.append(Target(name, str(container.get("image", "")), profile, models))
    if not targets:
        raise DataError(f"manifest {path} runs no tritonserver (no container or KServe Triton)")
    return targets


def _backend(config: str) -> tuple[str, str]:
    """(backend, default model file) of a config.pbtxt's text."""
    platform = re.search(r'^platform:\s*"([^"]+)"', config, re.M)
    backend = re.search(r'^backend:\s*"([^"]+)"', config, re.M)
    kind = platform.group(1) if platform else backend.group(1) if backend else ""
    filename = re.search(r'^default_model_filename:\s*"([^"]+)"', config, re.M)
    return kind, filename.group(1) if filename else NATIVE_FILES.get(kind, "")


def _unreadable(folder: Path) -> list[str]:
    """Files or folders under ``folder`` that other users cannot read (or enter)."""
    found = []
    for path in [folder, *folder.rglob("*")]:
        mode = path.lstat().st_mode
        needed = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
        if mode & needed != needed:
            found.append(f"{path} (mode {stat.S_IMODE(mode):04o})")
    return found


def check_model(model_dir: Path, target: Target) -> tuple[str, list[str]]:
    """(backend the model runs on there, problems)."""
    config_path = model_dir / "configs" / f"{target.profile}.pbtxt"
    if target.profile == "default" or not config_path.exists():
        config_path = model_dir / "config.pbtxt"
    backend, filename = _backend(config_path.read_text())
    versions = sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    problems = [] if versions else [f"model '{model_dir.name}' has no version folder"]
    for version in versions:
        where = f"model '{model_dir.name}' version {version.name}"
        if backend == "python":
            try:
                runtime = json.loads((version / "endpoint.json").read_text())["runtime"]
            except (OSError, ValueError, KeyError):
                problems.append(f"{where} carries no runtime (exported by an older cycada)")
                continue
            packages = model_dir / runtime["folder"] / ("py" + target.python.replace(".", ""))
            if not packages.is_dir():
                carried = ", ".join(runtime["python"]) or "none"
                problems.append(
                    f"{where} carries packages for Python {carried}, the server there runs "
                    f"{target.python}: cycada export --runtime-python {target.python}"
                )
        elif not (version / filename).is_file():
            problems.append(f"{where} has no {filename} for profile {target.profile}")
    problems += [f"not readable by other users: {path}" for path in _unreadable(model_dir)[:3]]
    return backend, problems


def check_target(repository: Path, target: Target) -> str:
    """A line saying what serves there; DataError naming every problem."""
    models = sorted(p.parent for p in repository.glob("*/config.pbtxt"))
    if not models:
        raise DataError(f"{repository} is not a model repository (no <model>/config.pbtxt)")
    names = {model.name for model in models}
    problems = [f"{target.where} names model '{m}', not in {repository}" for m in target.models
                if m not in names]  # fmt: skip
    served = []
    for model in models:
        if target.models and model.name not in target.models:
            continue
        backend, found = check_model(model, target)
        problems += [f"{target.where}: {problem}" for problem in found]
        served.append(f"{model.name} ({backend})")
    if problems:
        raise DataError(f"{repository} would not serve as deployed: " + "; ".join(problems))
    return f"{target.where}: profile {target.profile}, Python {target.python}: " + ", ".join(served)


def deploy_check(repository: Path, manifests: list[Path]) -> list[str]:
    """One line per place the repository is deployed (the embedded server when no manifest)."""
    targets = [t for path in manifests for t in manifest_targets(path)]
    return [check_target(repository, t) for t in targets or [Target("embedded tritonserver")]]
