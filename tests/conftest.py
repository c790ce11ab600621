"""Shared fixtures; the helpers they use live in ``tests/helpers.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import data_path

# The longest modules first (each a minute or more of CPU on this 2-vCPU VM): `make test` runs
# pytest-xdist with --dist loadfile --no-loadscope-reorder, which hands modules out in this
# order; its default order (most tests first) left the two demos to the end, on two cores while
# the third worker had nothing left. The quick modules after them fill the gaps.
LONGEST_FIRST = [
    "tests/clients/test_demo.py",
    "tests/serving/test_served_endpoints.py",  # makes the shared export (exported_repository)
    "tests/clients/test_demo_own_video.py",
    "tests/training/test_digits_pipeline.py",
    "tests/clients/test_commands.py",
    "tests/training/test_seg_pipeline.py",
    "tests/serving/test_self_contained_repository.py",
    "tests/export/test_export_run.py",
    "tests/training/test_seg_distributed.py",
    "tests/serving/test_updates_and_replicas.py",
    "tests/training/test_digits_seeds.py",
    "tests/training/test_digits_paper_bench.py",
    "tests/clients/test_video_faults.py",
    "tests/test_file_inputs.py",
    "tests/training/test_method.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {module: position for position, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable


@pytest.fixture
def data_root() -> Path:
    return data_path()


def _session_root(tmp_path_factory) -> Path:
    """The folder every process of this test run shares: the base temporary folder, or with
    pytest-xdist (``make test`` runs three workers) the folder above the workers' own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(autouse=True, scope="session")
def graph_cache(tmp_path_factory) -> Path:
    """One ONNX graph cache for the whole test run, shared by the workers (commands started by
    tests inherit it): the first export of given weights traces, later exports copy."""
    folder = _session_root(tmp_path_factory) / "graph-cache"
    folder.mkdir(exist_ok=True)
    os.environ["CYCADA_CACHE_DIR"] = str(folder)
    # exports time the CPU engines only where a test asks (ExportOptions(cpu_engines=True)):
    # OpenVINO's conversion is one more trace per model
    os.environ["CYCADA_EXPORT_CPU_ENGINES"] = "0"
    return folder


@pytest.fixture(scope="session")
def exported_repository(tmp_path_factory) -> Path:
    """One export (ONNX fp32 + fp16, parity checked) of seeded random weights: Fast-SCNN and two
    ResNet-6 generators. The modules that serve a repository copy it (`served_copy`), so the
    export runs once per test run, whichever worker asks first (the others wait for it)."""
    from filelock import FileLock

    from cycada.benchmarks.served import random_run
    from cycada.export.exporter import ExportOptions, export_run

    root = _session_root(tmp_path_factory)
    repo, done = root / "exported_repository", root / "exported_repository.done"
    with FileLock(str(root / "exported_repository.lock")):
        if not done.exists():
            (root / "exported_run").mkdir(exist_ok=True)
            run = random_run("fastscnn", root / "exported_run", generators="resnet6")
            # ONNX Runtime alone (CYCADA_EXPORT_CPU_ENGINES=0 above): OpenVINO's conversion and
            # timing cost this fixture 40 s, which every server test waits for; a NumPy-only
            # stub serving a model that chose OpenVINO was checked when it was added (session
            # 24), and tests/export checks the choice
            report = export_run(run, repo, ExportOptions(), log=lambda _: None)
            assert all(row.ok for row in report.rows)
            variants = {row.variant for row in report.rows}
            optional = {"openvino", "openvino-bf16"}
            assert {"onnx-fp32", "onnx-fp16"} <= variants <= {"onnx-fp32", "onnx-fp16", *optional}
            done.touch()
    return repo
