"""A content-addressed cache of exported ONNX graphs, so exporting unchanged weights again takes
seconds instead of a trace.

The key covers everything an exported graph depends on: the network's weights and buffers, the
endpoint's kind and padding, the variant (fp16, extra logits output, simplified), the opset, the
torch and onnx versions, and the source of the exporting modules and of every module that
defines one of the network's layers. A hit is copied into place; a miss is exported as usual and
stored. ``$CYCADA_CACHE_DIR`` (default ``~/.cache/cycada``) holds it under ``onnx/``; the oldest
graphs are dropped beyond ``MAX_BYTES``; ``CYCADA_CACHE_DIR=off`` (or ``cycada export
--no-cache``) turns it off.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import onnx
import torch
from torch import nn

from cycada.atomic import atomic_path
from cycada.cache import cache_root

MAX_BYTES = 4 * 1024**3
# a process tracing graphs ahead of the exporter (see start_half_precision_helper)
_helper: subprocess.Popen | None = None


def cache_dir() -> Path | None:
    """The graph cache folder, or None when caching is off."""
    root = cache_root()
    return None if root is None else root / "onnx"


def _sources(network: nn.Module) -> list[str]:
    files = {inspect.getsourcefile(sys.modules[__name__])}
    for name in ("cycada.export.onnx_export", "cycada.models.graphs", "cycada.models.endpoints"):
        files.add(inspect.getsourcefile(sys.modules[name]))
    for module in network.modules():
        try:
            files.add(inspect.getsourcefile(type(module)))
        except TypeError:  # a built-in class
            continue
    return sorted(f for f in files if f)


def graph_key(network: nn.Module, description: dict) -> str:
    """Hash of what the exported graph of ``network`` depends on (``description``: the
    endpoint's kind and padding, the variant, the opset)."""
    digest = hashlib.sha256()
    digest.update(repr(sorted(description.items())).encode())
    digest.update(f"torch {torch.__version__} onnx {onnx.__version__}".encode())
    for path in _sources(network):
        if "site-packages" in path:  # torch's own layers: covered by the torch version
            continue
        digest.update(Path(path).read_bytes())
    for name, tensor in network.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def fetch(key: str, path: Path, wait: bool = False) -> bool:
    """Copy the cached graph ``key`` to ``path`` (atomically); False on a miss. With ``wait``,
    a graph the helper process is still tracing is waited for."""
    folder = cache_dir()
    cached = folder / f"{key}.onnx" if folder else None
    if cached is None:
        return False
    while wait and not cached.exists() and _helper is not None and _helper.poll() is None:
        time.sleep(0.05)
    if not cached.exists():
        return False
    with atomic_path(path) as tmp:
        shutil.copyfile(cached, tmp)
    os.utime(cached)  # recently used: kept longest
    return True


def store(key: str, path: Path) -> None:
    """Keep a copy of the exported graph at ``path``; a cache that cannot be written is skipped
    (the export itself has succeeded)."""
    folder = cache_dir()
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / f"{key}.onnx") as tmp:
            shutil.copyfile(path, tmp)
        _prune(folder)
    except OSError:
        return


def _prune(folder: Path) -> None:
    graphs = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    total = 0
    for graph in graphs:
        total += graph.stat().st_size
        if total > MAX_BYTES:
            graph.unlink(missing_ok=True)


def start_half_precision_helper(run_dir: Path, simplify: bool, stage: str | None = None) -> None:
    """Trace the run's fp16 graphs into the cache in a second process while this one exports
    and checks the fp32 graphs: a trace is single-threaded Python, so on two or more cores the
    two run side by side. The exporter then takes each fp16 graph from the cache (waiting for
    it when needed); if the helper fails, the exporter traces the graph itself."""
    global _helper
    if cache_dir() is None or (os.cpu_count() or 1) < 2:
        return
    if os.environ.get("CYCADA_EXPORT_HELPER", "1") == "0" or _helper is not None:
        return
    command = [sys.executable, "-m", "cycada.export.half_precision_helper", str(run_dir)]
    options = [*(["--simplify"] if simplify else []), *([f"--stage={stage}"] if stage else [])]
    _helper = subprocess.Popen(
        [*command, *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "CYCADA_CACHE_DIR": str(cache_dir().parent)},
    )


def wait_for_helper(timeout: float = 900.0) -> None:
    """Let the helper finish (its graphs stay in the cache): speed measured while it traces
    would be the machine's leftover, not the engine's."""
    if _helper is not None and _helper.poll() is None:
        try:
            _helper.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_helper()


def stop_helper() -> None:
    """Stop the helper (done or not): what it finished stays in the cache."""
    global _helper
    if _helper is not None:
        if _helper.poll() is None:
            _helper.terminate()
        _helper.wait(timeout=10)
        _helper = None
