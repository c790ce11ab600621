"""Segmentation feature stage: a score-map discriminator against f_T (appendix A.1.2).

D_feat is three 1x1 convolutions (19→512→256→2) classifying every score-map pixel as
(translated) source or target, trained with pixel-wise cross-entropy. f_T gets the inverted
target label, weighted 0.1, plus the task loss on translated source (Eq. 6), only while
D_feat's accuracy over the last ``gate_window`` iterations is above ``gate_threshold``. One
source and one target crop per iteration (768x768 in the paper), SGD momentum 0.99, lr 1e-5.
If a whole pass over the target images brings no f_T update, the stage stops.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cycada.models.segmenters import Segmenter
from cycada.training.core.discriminators import ScoreMapDiscriminator
from cycada.training.core.feature_gate import FeatureGate
from cycada.training.core.losses import FeatureGANLoss, TaskLoss, domain_accuracy
from cycada.training.core.losses.feature_gan import SOURCE_DOMAIN, TARGET_DOMAIN
from cycada.training.segmentation.data import SegmentationSet
from cycada.training.segmentation.loaders import (
    endless_batches,
    resume_streams,
    stream_places,
    train_transform,
)
from cycada.training.segmentation.run import SegRun


def freeze_batch_norm(model: nn.Module) -> None:
    """Batch-norm layers keep their statistics: one image per domain per step is too few."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def train_feature(
    run: SegRun, task_tgt: Segmenter, source: SegmentationSet
) -> tuple[Segmenter, dict[str, Any]]:
    cfg = run.config.feature
    generator = run.generator("feature")
    disc = ScoreMapDiscriminator(run.space.num_classes, cfg.discriminator_channels).to(run.device)
    sgd = dict(momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    opt_task = torch.optim.SGD(task_tgt.parameters(), lr=cfg.lr, **sgd)
    opt_disc = torch.optim.SGD(disc.parameters(), lr=cfg.disc_lr or cfg.lr, **sgd)
    resume = run.stage_resume(
        "feature",
        {"task_tgt": task_tgt, "disc_feat": disc},
        {"task": opt_task, "disc": opt_disc},
        generator,
    )
    start, extra = resume.restore()
    updates_total = int(extra.get("updates_total", 0))
    transform = train_transform(run, "feature", cfg.crop, True, source, run.target_train)
    sources = endless_batches(run, source, transform, 1, generator)
    targets = endless_batches(run, run.target_train, transform, 1, generator)
    streams = {"source": sources, "target": targets}
    gan_loss, task_loss = FeatureGANLoss(), TaskLoss()
    gate = FeatureGate(cfg.gate_threshold, cfg.gate_window, min_steps=cfg.gate_window)
    # a 'pass' for the stop rule: the target set once, and at least one full gate window
    epoch_length = max(len(run.target_train), cfg.gate_window)
    updates_this_pass, stop_reason = int(extra.get("updates_this_pass", 0)), "max_iterations"
    if start:
        run.log.info(f"feature: resuming at iteration {start}/{cfg.iterations}")
        resume_streams(generator, streams, extra.get("streams"))
        gate.accuracies.extend(extra.get("gate_accuracies", []))
    bar = run.log.progress(cfg.iterations, "feature", initial=start)
    task_tgt.train()
    freeze_batch_norm(task_tgt)
    completed = start
    for iteration in range(start, cfg.iterations):
        completed = iteration + 1
        batch_src, batch_tgt = next(sources), next(targets)
        x_src, x_tgt = run.input(batch_src["image"]), run.input(batch_tgt["image"])
        labels = batch_src["label"].to(run.device)
        with run.autocast():
            scores_src, scores_tgt = task_tgt.score_maps(x_src), task_tgt.score_maps(x_tgt)
            out_src, out_tgt = disc(scores_src.detach()), disc(scores_tgt.detach())
            loss_disc = gan_loss(out_src, SOURCE_DOMAIN) + gan_loss(out_tgt, TARGET_DOMAIN)
        opt_disc.zero_grad(set_to_none=True)
        loss_disc.float().backward()
        run.sync_gradients(disc)
        opt_disc.step()
        # one gate decision for every data-parallel process (they must update together)
        accuracy = run.dist.mean(domain_accuracy(out_src.detach(), out_tgt.detach()))
        gate.record(accuracy)
        values = {"disc_loss": loss_disc.item(), "disc_accuracy": accuracy, "updated": 0.0}
        if gate.is_open:
            with run.autocast():
                loss_gen = gan_loss(disc(scores_tgt), SOURCE_DOMAIN)  # inverted label
                logits = torch.nn.functional.interpolate(
                    scores_src, size=x_src.shape[-2:], mode="bilinear", align_corners=False
                )
                loss = cfg.generator_weight * loss_gen + cfg.task_weight * task_loss(logits, labels)
            opt_task.zero_grad(set_to_none=True)
            loss.float().backward()
            run.sync_gradients(task_tgt)
            opt_task.step()
            values.update(gen_loss=loss_gen.item(), updated=1.0)
            updates_this_pass += 1
            updates_total += 1
        bar.update()
        if (iteration + 1) % 10 == 0:
            bar.set_postfix(d_acc=f"{gate.mean_accuracy:.2f}", updates=updates_total)
            run.log.scalars("feature", values, iteration + 1)
        if (iteration + 1) % run.config.checkpoint_every == 0:
            state = {
                "updates_total": updates_total,
                "updates_this_pass": updates_this_pass,
                "gate_accuracies": list(gate.accuracies),
                "streams": stream_places(streams),
            }
            resume.save(iteration + 1, state)
        if (iteration + 1) % epoch_length == 0:
            if updates_this_pass == 0:
                stop_reason = "no_suitable_discriminator"
                run.log.info(f"feature: no suitable discriminator after iteration {iteration + 1}")
                break
            updates_this_pass = 0
    bar.close()
    resume.finish()
    task_tgt.eval()
    run.log.info(
        f"feature: f_T updated on {updates_total} of {completed} iterations (only while "
        f"D_feat told the domains apart more than {cfg.gate_threshold:.0%} of the time over "
        f"the last {cfg.gate_window}); stop: {stop_reason}"
    )
    return task_tgt, {"stop_reason": stop_reason, "generator_updates": updates_total}
