"""Supervised segmenter training: the source model f_S (stage 1) and f_T on translated source
(stage 3). SGD with momentum on random crops, as in appendix A.1.2."""

from __future__ import annotations

import torch

from cycada.models.segmenters import Segmenter
from cycada.training.core.losses import TaskLoss
from cycada.training.segmentation.config import SegSupervisedConfig
from cycada.training.segmentation.data import SegmentationSet
from cycada.training.segmentation.loaders import (
    endless_batches,
    resume_streams,
    stream_places,
    train_transform,
)
from cycada.training.segmentation.run import SegRun
from cycada.training.segmentation.step_context import StepContext


def poly_lr(base: float, iteration: int, total: int, power: float) -> float:
    return base if power <= 0 else base * (1 - iteration / max(total, 1)) ** power


class SupervisedStep:
    """One iteration of a supervised stage (f_S on the source, f_T on translated source): SGD
    at the poly schedule's rate, fp16 autocast on CUDA. :func:`train_segmenter` repeats it;
    ``cycada bench seg-stages`` times it."""

    def __init__(self, context: StepContext, model: Segmenter, cfg: SegSupervisedConfig):
        self.context, self.model, self.cfg = context, model, cfg
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=context.cuda and context.amp)
        self.task_loss = TaskLoss()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, iteration: int) -> torch.Tensor:
        """uint8 images (N, 3, H, W) and their train ids → the loss (before the step)."""
        cfg, context = self.cfg, self.context
        for group in self.optimizer.param_groups:
            group["lr"] = poly_lr(cfg.lr, iteration, cfg.iterations, cfg.poly_power)
        labels = labels.to(context.device, non_blocking=True)
        with context.autocast():
            loss = self.task_loss(self.model(context.input(images)), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        context.sync_gradients(self.model)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss


def train_segmenter(
    run: SegRun,
    stage: str,
    generator: torch.Generator,
    model: Segmenter,
    dataset: SegmentationSet,
    cfg: SegSupervisedConfig,
) -> Segmenter:
    step = SupervisedStep(run, model, cfg)
    resume = run.stage_resume(stage, {"model": model}, {"sgd": step.optimizer}, generator)
    start, extra = resume.restore()
    transform = train_transform(run, stage, cfg.crop, cfg.flip, dataset)
    batches = endless_batches(run, dataset, transform, cfg.batch_size, generator)
    if start:
        run.log.info(f"{stage}: resuming at iteration {start}/{cfg.iterations}")
        resume_streams(generator, {"images": batches}, extra.get("streams"))
    bar = run.log.progress(cfg.iterations, stage, initial=start)
    model.train()
    for iteration in range(start, cfg.iterations):
        batch = next(batches)
        loss = step(batch["image"], batch["label"], iteration)
        bar.update()
        if (iteration + 1) % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            run.log.scalars(
                stage,
                {"task_loss": loss.item(), "lr": step.optimizer.param_groups[0]["lr"]},
                iteration + 1,
            )
        if (iteration + 1) % run.config.checkpoint_every == 0:
            resume.save(iteration + 1, {"streams": stream_places({"images": batches})})
    bar.close()
    resume.finish()
    model.eval()
    return model
