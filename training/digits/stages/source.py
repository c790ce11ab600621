"""Stage 1: the source task model f_S on labelled source data (paper Eq. 1)."""

from __future__ import annotations

import torch

from cycada.models.digit_networks import DigitTaskNet
from cycada.training.core.batches import epoch_batches
from cycada.training.core.losses import TaskLoss
from cycada.training.digits.run import DigitsRun


def train_supervised(
    run: DigitsRun,
    stage: str,
    generator: torch.Generator,
    model: DigitTaskNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
) -> DigitTaskNet:
    """Adam on cross-entropy; shared by stage 1 (f_S) and stage 3 (f_T on translated source)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    resume = run.stage_resume(stage, {"model": model}, {"adam": optimizer}, generator)
    start_epoch, _ = resume.restore()
    if start_epoch:
        run.log.info(f"{stage}: resuming at epoch {start_epoch + 1}/{epochs}")
    task_loss = TaskLoss()
    images, labels = images.to(run.device), labels.to(run.device)
    steps_per_epoch = len(epoch_batches(len(images), batch_size, torch.Generator()))
    bar = run.log.progress(epochs * steps_per_epoch, stage, initial=start_epoch * steps_per_epoch)
    model.train()
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, epochs):
        for index in epoch_batches(len(images), batch_size, generator):
            index = index.to(run.device)
            loss = task_loss(model(images[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
                run.log.scalars(stage, {"task_loss": loss.item()}, step)
        resume.save(epoch + 1)
    bar.close()
    resume.finish()
    model.eval()
    return model


def train_source(run: DigitsRun) -> DigitTaskNet:
    cfg = run.config.source
    domain = run.source_train
    generator = run.generator("source")
    return train_supervised(
        run,
        "source",
        generator,
        run.new_task_net(),
        domain.images,
        domain.labels,
        cfg.epochs,
        cfg.batch_size,
        cfg.lr,
    )
