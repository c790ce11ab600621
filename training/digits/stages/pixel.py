"""Stage 2 on digits: the pixel-adaptation loop over the in-memory source and target images."""

from __future__ import annotations

import torch
from torch import nn

from cycada.training.core.batches import EndlessBatches
from cycada.training.core.pixel_adaptation import PixelAdaptation, linear_decay, write_samples
from cycada.training.digits.run import DigitsRun


def pixel_domains(run: DigitsRun) -> tuple[torch.Tensor, torch.Tensor]:
    """Source and target training images at the pixel stage's size and channels."""
    size, channels = run.config.pixel.image_size, run.image_channels
    return (
        run.source_train.fitted(channels, size).to(run.device),
        run.target_train.fitted(channels, size).to(run.device),
    )


def build_pixel_adaptation(
    run: DigitsRun, task_src: nn.Module, generator: torch.Generator
) -> PixelAdaptation:
    """The pixel networks to train, with a fresh task network for the alongside semantic
    classifier when the config asks for one (staged and joint modes alike)."""
    cfg = run.config.pixel
    alongside = run.new_task_net() if cfg.semantic_model == "alongside" else None
    pixel = PixelAdaptation(cfg, run.image_channels, task_src, generator, False, alongside)
    return pixel.to(run.device)


def train_pixel(run: DigitsRun, task_src: nn.Module) -> PixelAdaptation:
    cfg = run.config.pixel
    generator = run.generator("pixel")
    pixel = build_pixel_adaptation(run, task_src, generator)
    x_src, x_tgt = pixel_domains(run)
    y_src = run.source_train.labels.to(run.device)
    steps_per_epoch = max(len(x_src), len(x_tgt)) // cfg.batch_size or 1
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    epochs = -(-total // steps_per_epoch)
    resume = run.stage_resume("pixel", *pixel.resume_state(), generator)
    start_epoch, _ = resume.restore()
    if start_epoch:
        run.log.info(f"pixel: resuming at epoch {start_epoch + 1}/{epochs}")
    src_batches = EndlessBatches(len(x_src), cfg.batch_size, generator)
    tgt_batches = EndlessBatches(len(x_tgt), cfg.batch_size, generator)
    fixed_src, fixed_tgt = x_src[:8], x_tgt[:8]
    step = start_epoch * steps_per_epoch
    bar = run.log.progress(total, "pixel", initial=step)
    pixel.train()
    for epoch in range(start_epoch, epochs):
        for _ in range(steps_per_epoch):
            if step >= total:
                break
            pixel.set_lr(linear_decay(cfg.lr, step, total, cfg.lr_decay_start))
            index = next(src_batches)
            losses, _ = pixel.step(x_src[index], x_tgt[next(tgt_batches)], y_src=y_src[index])
            step += 1
            bar.update()
            if step % 10 == 0:
                bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
                run.log.scalars("pixel", losses, step)
            if step % cfg.sample_every == 0 or step == total:
                write_samples(run.out_dir, pixel, fixed_src, fixed_tgt, step)
        resume.save(epoch + 1)
    bar.close()
    resume.finish()
    pixel.eval()
    return pixel
