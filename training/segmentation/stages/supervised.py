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


def poly_lr(base: float, iteration: int, total: int, power: float) -> float:
    return base if power <= 0 else base * (1 - iteration / max(total, 1)) ** power


def train_segmenter(
    run: SegRun,
    stage: str,
    generator: torch.Generator,
    model: Segmenter,
    dataset: SegmentationSet,
    cfg: SegSupervisedConfig,
) -> Segmenter:
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    scaler = torch.amp.GradScaler("cuda", enabled=run.cuda and run.config.amp)
    resume = run.stage_resume(stage, {"model": model}, {"sgd": optimizer}, generator)
    start, extra = resume.restore()
    transform = train_transform(run, stage, cfg.crop, cfg.flip, dataset)
    batches = endless_batches(run, dataset, transform, cfg.batch_size, generator)
    if start:
        run.log.info(f"{stage}: resuming at iteration {start}/{cfg.iterations}")
        resume_streams(generator, {"images": batches}, extra.get("streams"))
    task_loss = TaskLoss()
    bar = run.log.progress(cfg.iterations, stage, initial=start)
    model.train()
    for iteration in range(start, cfg.iterations):
        for group in optimizer.param_groups:
            group["lr"] = poly_lr(cfg.lr, iteration, cfg.iterations, cfg.poly_power)
        batch = next(batches)
        labels = batch["label"].to(run.device, non_blocking=True)
        with run.autocast():
            loss = task_loss(model(run.input(batch["image"])), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        run.sync_gradients(model)
        scaler.step(optimizer)
        scaler.update()
        bar.update()
        if (iteration + 1) % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            run.log.scalars(
                stage,
                {"task_loss": loss.item(), "lr": optimizer.param_groups[0]["lr"]},
                iteration + 1,
            )
        if (iteration + 1) % run.config.checkpoint_every == 0:
            resume.save(iteration + 1, {"streams": stream_places({"images": batches})})
    bar.close()
    resume.finish()
    model.eval()
    return model
