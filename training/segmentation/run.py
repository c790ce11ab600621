"""Shared state of one segmentation run: process group, device, data, log, networks, precision,
seeds, gradient sync and stage storage (loaders in :mod:`.loaders`, evaluation in
:mod:`.evaluator`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from cycada import configs
from cycada.atomic import make_output_folder
from cycada.checkpoint import load_state, save_state
from cycada.models.segmenters import Segmenter, build_segmenter, load_backbone
from cycada.training.core.device import resolve_device
from cycada.training.core.distributed import init_distributed, same_weights
from cycada.training.core.run_log import RunLog
from cycada.training.core.stage_store import StageStore
from cycada.training.core.stages import Stage
from cycada.training.segmentation.config import SegRunConfig
from cycada.training.segmentation.domains import load_run_data
from cycada.training.segmentation.evaluator import SegEvaluator
from cycada.training.segmentation.label_spaces import LABEL_SPACES
from cycada.training.segmentation.step_context import StepContext

# the data keys f_S depends on; and the keys that change no stage's weights
SOURCE_DATA_KEYS = (
    "source",
    "source_split",
    "label_space",
    "resize_width",
    "crop_mode",
    "max_samples",
)
NOT_TRAINING_KEYS = (
    "data_root",
    "source_root",
    "target_root",
    "eval_root",
    "eval_set",
    "eval_split",
    "workers",
)


class SegRun(StageStore, StepContext):
    def __init__(
        self,
        config: SegRunConfig,
        out_dir: Path,
        stages: Mapping[str, Stage],
        quiet: bool = False,
    ):
        self.config, self.out_dir, self.stages = config, out_dir, stages
        self.dist = init_distributed(config.device)
        self.is_main = self.dist.is_main
        self.device = resolve_device(config.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.amp, self.channels_last = config.amp, config.channels_last
        self.space = LABEL_SPACES[config.data.label_space]
        data = config.data

        make_output_folder(out_dir)
        self.log = RunLog(out_dir, quiet=quiet or not self.dist.is_main, write=self.dist.is_main)
        run_data = load_run_data(
            data,
            out_dir,
            self.space,
            config.eval_max_samples,
            self.log.info,
            self.dist.is_main,
            self.dist.barrier,
            quiet=quiet or not self.dist.is_main,
        )
        self.source_train = run_data.source_train
        self.target_train = run_data.target_train
        self.target_holdout = run_data.target_holdout
        self.signal_set = run_data.signal_set  # where the label-free signals are measured
        self.evaluation = run_data.evaluation
        self.evaluation_kind = run_data.describe_evaluation()
        self.evaluator = SegEvaluator(self)
        if self.dist.enabled:
            self.log.info(
                f"data parallel: {self.dist.world_size} processes, {self.device} on this one; "
                "effective batch = batch_size x processes"
            )

    # -- networks and precision -------------------------------------------------------------
    def new_segmenter(self, backbone: bool = True) -> Segmenter:
        model = build_segmenter(self.config.model, self.space.num_classes)
        if backbone and self.config.backbone_weights:
            loaded = load_backbone(model, self.config.backbone_weights)
            self.log.info(f"backbone: {len(loaded)} tensors from {self.config.backbone_weights}")
        model = model.to(self.device)
        if self.cuda and self.config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def generator(self, stage: str) -> torch.Generator:
        """Seeds a stage: networks initialise alike on every process, batches differ by rank."""
        torch.manual_seed(self.config.seed * 100 + self.stage_seed(stage))
        return torch.Generator().manual_seed(self.data_seed(stage))

    def data_seed(self, stage: str, epoch: int = 0) -> int:
        offset = self.stage_seed(stage)
        return self.config.seed * 100 + offset + 100_003 * self.dist.rank + 7919 * epoch

    def save_stage(self, stage, modules, extra=None):
        """Rank 0 writes; the other processes wait, then check their replicas are identical."""
        path = self.checkpoint_path(stage)
        self.dist.average_buffers(modules.values())
        if self.dist.is_main:
            super().save_stage(stage, modules, extra)
        self.dist.barrier()
        if not self.dist.is_main:
            differing = same_weights(modules, load_file(str(path)))
            if differing:
                raise RuntimeError(
                    f"rank {self.dist.rank}: replica differs from rank 0 after '{stage}' "
                    f"({len(differing)} tensors, e.g. {differing[0]})"
                )
        return path

    def stage_resume(self, stage, modules, optimizers, generator):
        resume = super().stage_resume(stage, modules, optimizers, generator)
        if not self.dist.enabled:
            return resume
        return _RankResume(resume, self, stage)

    # -- checkpoints --------------------------------------------------------------------------
    def fingerprint_common(self, c: Any, stage: str) -> dict[str, Any]:
        """f_S depends only on the source side, so one source checkpoint serves runs that adapt
        to different targets (copy ``checkpoints/source.safetensors`` into the new run folder)."""
        data = configs.to_dict(c.data)
        if stage == "source":
            data = {key: data[key] for key in SOURCE_DATA_KEYS}
        else:
            data = {key: value for key, value in data.items() if key not in NOT_TRAINING_KEYS}
        return {"model": c.model, "seed": c.seed, "backbone": c.backbone_weights, "data": data}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "task": "seg",
            "model": self.config.model,
            "label_space": self.space.name,
            "class_names": list(self.space.classes),
            "resize_width": self.config.data.resize_width,
        }


class _RankResume:
    """A stage's resume state under data parallelism.

    Rank 0 writes the stage's resume file (weights, optimisers and its own place in its batch
    order); every other rank writes beside it what only it has: its shuffling generator, its
    global random state, its batch-norm statistics, its batch streams' places and its image
    pools, in a file named by the step (``<stage>.resume.rank<R>.step<N>.pt``). The ranks
    write first and rank 0 last, so a resume file always has its ranks' files of the same
    step; older steps' files go once the new resume file exists. A resumed run therefore
    draws on every rank the batches the uninterrupted run would have drawn. Without a rank's
    file for the resumed step (a resume file of an older cycada, or one written by another
    number of processes) that rank re-seeds its batch order by rank and step, as before.
    """

    def __init__(self, inner, run: SegRun, stage: str):
        self.inner, self.run, self.stage = inner, run, stage
        self.rank, self.world_size = run.dist.rank, run.dist.world_size

    def rank_path(self, step: int) -> Path:
        return self.inner.path.with_name(f"{self.stage}.resume.rank{self.rank}.step{step}.pt")

    def restore(self):
        start, extra = self.inner.restore()
        if not start:
            return start, extra
        own = self._restore_own(start, extra)
        # one line in log.txt (rank 0's) for every rank that cannot resume its own order
        without = round((1.0 - self.run.dist.mean(float(own))) * self.world_size)
        if without:
            self.run.log.info(
                f"{self.stage}: {without} of {self.world_size} processes have no batch order of "
                f"their own to resume at step {start} (a resume state of an older cycada or of "
                "another number of processes); they draw new ones"
            )
        if not own:
            self.inner.generator.manual_seed(self.run.data_seed(self.stage, start))
            extra.pop("streams", None)  # rank 0's place in its batch order, not this rank's
        return start, extra

    def _restore_own(self, start: int, extra: dict[str, Any]) -> bool:
        """Restore this rank's own state for step ``start``; False where it has none."""
        if self.rank == 0:
            return extra.get("world_size") == self.world_size
        path = self.rank_path(start)
        if not path.exists():
            return False
        state = load_state(path)
        if state.get("world_size") != self.world_size or state.get("step") != start:
            return False
        self.inner.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self._load_buffers(state["buffers"])
        extra.update(state["extra"])
        return True

    def save(self, next_epoch, extra=None) -> None:
        extra = dict(extra or {})
        if self.rank != 0:
            own = {key: extra[key] for key in ("streams", "pools") if key in extra}
            state = {
                "step": next_epoch,
                "world_size": self.world_size,
                "generator": self.inner.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "buffers": self._buffers(),
                "extra": own,
            }
            save_state(self.rank_path(next_epoch), state)
        self.run.dist.barrier()  # every rank's file exists before the resume file names its step
        if self.rank == 0:
            self.inner.save(next_epoch, {**extra, "world_size": self.world_size})
        self.run.dist.barrier()
        if self.rank != 0:
            self._remove_rank_files(keep=self.rank_path(next_epoch))

    def finish(self) -> None:
        if self.rank == 0:
            self.inner.finish()  # every rank's files with its own

    def _buffers(self) -> dict[str, dict[str, torch.Tensor]]:
        """This rank's batch-norm statistics (gathered from its own batches; the weights are
        rank 0's, which every rank shares)."""
        return {
            name: {key: buffer.detach().cpu() for key, buffer in module.named_buffers()}
            for name, module in self.inner.modules.items()
        }

    def _load_buffers(self, saved: dict[str, dict[str, torch.Tensor]]) -> None:
        for name, module in self.inner.modules.items():
            for key, buffer in module.named_buffers():
                buffer.copy_(saved[name][key])

    def _remove_rank_files(self, keep: Path) -> None:
        pattern = f"{self.stage}.resume.rank{self.rank}.step*.pt"
        for path in self.inner.path.parent.glob(pattern):
            if path != keep:
                path.unlink(missing_ok=True)
