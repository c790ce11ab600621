"""Data parallelism with torchrun on the CPU (gloo): same command, identical replicas."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cycada.training.core.distributed import Distributed
from tests.helpers import TINY_SEG, write_tiny_domains


def _worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    group = Distributed(2, rank, rank)
    layer = torch.nn.Linear(3, 2)
    torch.manual_seed(0)
    layer.weight.grad = torch.full_like(layer.weight, float(rank + 1))  # 1 and 2
    layer.bias.grad = torch.full_like(layer.bias, float(10 * rank))
    layer.register_buffer("stat", torch.full((2,), float(rank)))
    group.average_gradients([layer])
    group.average_buffers([layer])
    results[rank] = (
        layer.weight.grad.flatten().tolist(),
        layer.bias.grad.tolist(),
        layer.stat.tolist(),
        group.mean(rank * 1.0),
    )
    dist.destroy_process_group()


def test_gradients_buffers_and_decisions_are_averaged():
    from cycada.serving.server import free_port

    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(free_port(), results), nprocs=2, join=True)
    for rank in (0, 1):
        weight, bias, stat, mean = results[rank]
        assert weight == [1.5] * 6 and bias == [5.0, 5.0] and stat == [0.5, 0.5] and mean == 0.5


@pytest.mark.slow
def test_torchrun_runs_every_stage_with_identical_replicas(tmp_path):
    root = write_tiny_domains(tmp_path / "data")
    sets = [arg for item in TINY_SEG for arg in ("--set", item)]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    command = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "cycada.cli",
        "train",
        "seg",
        "--source",
        "gta5",
        "--target",
        "cityscapes",
        "--data-root",
        str(root),
        "--preset",
        "quick",
        *sets,
        "--out",
        str(tmp_path / "run"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    # rank 1 compares its weights with what rank 0 saved after every stage and fails otherwise
    assert done.returncode == 0, done.stderr[-3000:]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "data parallel: 2 processes" in log
    measured = [line for line in log.splitlines() if "mIoU" in line and "ship:" not in line]
    assert len(measured) == 3  # evaluated once per stage, by rank 0 only
    for stage in ("source", "pixel", "target", "feature"):
        assert (tmp_path / "run" / "checkpoints" / f"{stage}.safetensors").exists()


def _resume_config(root: str):
    from cycada.training.segmentation.config import resolve_seg_config

    sets = [
        *TINY_SEG,
        "checkpoint_every=2",
        "source.iterations=8",
        "pixel.max_steps=8",
        "feature.iterations=8",
        "pixel.pool_size=2",
        "feature.gate_window=3",
        "target.iterations=1",
    ]
    return resolve_seg_config("quick", sets=sets, overrides={"data": {"data_root": root}})


def _stop_and_resume_worker(rank: int, port: int, root: str, out: str, stage: str) -> None:
    """One of two data-parallel processes: a run straight through, then one stopped on every
    rank right after its resume state at step 4 of ``stage``, then that run resumed."""
    from cycada.training.segmentation.pipeline import run_seg
    from cycada.training.segmentation.run import _RankResume

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    config = _resume_config(root)
    run_seg(config, Path(out) / "straight", quiet=True)
    save = _RankResume.save

    def save_then_stop(self, next_epoch, extra=None):
        save(self, next_epoch, extra)
        if self.stage == stage and next_epoch == 4:
            raise KeyboardInterrupt  # every rank, right after the resume state is written

    _RankResume.save = save_then_stop
    with pytest.raises(KeyboardInterrupt):
        run_seg(config, Path(out) / "stopped", quiet=True)
    dist.barrier()
    if rank == 0:  # a copy to resume later with one process
        shutil.copytree(Path(out) / "stopped", Path(out) / "stopped-alone")
        # and one whose rank 1 has no file of its own, as an older cycada left it
        shutil.copytree(Path(out) / "stopped", Path(out) / "stopped-older")
        for rank_file in (Path(out) / "stopped-older" / "checkpoints").glob("*.rank1.*"):
            rank_file.unlink()
    dist.barrier()
    _RankResume.save = save
    run_seg(config, Path(out) / "stopped", quiet=True)
    run_seg(config, Path(out) / "stopped-older", quiet=True)
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["source", "pixel"])
def test_data_parallel_stage_resumes_with_every_ranks_batches(tmp_path, stage):
    """Resumed under data parallelism, a stage ends with the weights of a run that never
    stopped: rank 1 resumes its own batch order and image pools, not a new order (as it once
    did, being given only rank 0's place)."""
    from safetensors.torch import load_file

    from cycada.serving.server import free_port

    root = write_tiny_domains(tmp_path / "data")
    mp.spawn(
        _stop_and_resume_worker,
        args=(free_port(), str(root), str(tmp_path), stage),
        nprocs=2,
        join=True,
    )
    log = (tmp_path / "stopped" / "log.txt").read_text()
    assert f"{stage}: resuming at" in log and "draw new ones" not in log
    straight, resumed = (
        load_file(tmp_path / name / "checkpoints" / f"{stage}.safetensors")
        for name in ("straight", "stopped")
    )
    differing = [key for key in straight if not straight[key].equal(resumed[key])]
    assert not differing, f"{len(differing)} of {len(straight)} tensors differ: {differing[:3]}"
    assert not list((tmp_path / "stopped" / "checkpoints").glob("*.resume*"))
    older = (tmp_path / "stopped-older" / "log.txt").read_text()
    assert "1 of 2 processes have no batch order of their own to resume at step 4" in older

    # the same stopped run resumed by one process: rank 0's place, and no rank file left behind
    from cycada.training.segmentation.pipeline import run_seg

    alone = tmp_path / "stopped-alone"
    assert (alone / "checkpoints" / f"{stage}.resume.rank1.step4.pt").exists()
    run_seg(_resume_config(str(root)), alone, quiet=True)
    assert f"{stage}: resuming at" in (alone / "log.txt").read_text()
    assert not list((alone / "checkpoints").glob("*.resume*"))
