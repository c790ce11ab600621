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
from cycada.training.segmentation.config import SegFeatureConfig
from cycada.training.segmentation.data import SegmentationSet
from cycada.training.segmentation.loaders import (
    endless_batches,
    resume_streams,
    stream_places,
    train_transform,
)
from cycada.training.segmentation.run import SegRun
from cycada.training.segmentation.step_context import StepContext


def freeze_batch_norm(model: nn.Module) -> None:
    """Batch-norm layers keep their statistics: one image per domain per step is too few."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


class FeatureStep:
    """One feature-stage iteration: D_feat learns to tell the two domains' score maps apart;
    while the gate is open, f_T is updated to fool it (inverted label, ``generator_weight``)
    with the task loss on translated source (Eq. 6). :func:`train_feature` repeats it;
    ``cycada bench seg-stages`` times it."""

    def __init__(
        self, context: StepContext, task_tgt: Segmenter, cfg: SegFeatureConfig, classes: int
    ):
        self.context, self.task_tgt, self.cfg = context, task_tgt, cfg
        self.disc = ScoreMapDiscriminator(classes, cfg.discriminator_channels).to(context.device)
        sgd = dict(momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.opt_task = torch.optim.SGD(task_tgt.parameters(), lr=cfg.lr, **sgd)
        self.opt_disc = torch.optim.SGD(self.disc.parameters(), lr=cfg.disc_lr or cfg.lr, **sgd)
        self.gan_loss, self.task_loss = FeatureGANLoss(), TaskLoss()
        self.gate = FeatureGate(cfg.gate_threshold, cfg.gate_window, min_steps=cfg.gate_window)

    def __call__(self, batch_src: dict, batch_tgt: dict) -> dict[str, float]:
        """One source and one target batch (uint8 images; the source's labels) → the losses,
        D_feat's accuracy and whether f_T was updated (1.0) or not (0.0)."""
        context, cfg, disc, gan_loss = self.context, self.cfg, self.disc, self.gan_loss
        x_src, x_tgt = context.input(batch_src["image"]), context.input(batch_tgt["image"])
        labels = batch_src["label"].to(context.device)
        with context.autocast():
            scores_src = self.task_tgt.score_maps(x_src)
            scores_tgt = self.task_tgt.score_maps(x_tgt)
            out_src, out_tgt = disc(scores_src.detach()), disc(scores_tgt.detach())
            loss_disc = gan_loss(out_src, SOURCE_DOMAIN) + gan_loss(out_tgt, TARGET_DOMAIN)
        self.opt_disc.zero_grad(set_to_none=True)
        loss_disc.float().backward()
        context.sync_gradients(disc)
        self.opt_disc.step()
        # one gate decision for every data-parallel process (they must update together)
        accuracy = context.dist.mean(domain_accuracy(out_src.detach(), out_tgt.detach()))
        self.gate.record(accuracy)
        values = {"disc_loss": loss_disc.item(), "disc_accuracy": accuracy, "updated": 0.0}
        if self.gate.is_open:
            with context.autocast():
                loss_gen = gan_loss(disc(scores_tgt), SOURCE_DOMAIN)  # inverted label
                logits = torch.nn.functional.interpolate(
                    scores_src, size=x_src.shape[-2:], mode="bilinear", align_corners=False
                )
                task = self.task_loss(logits, labels)
                loss = cfg.generator_weight * loss_gen + cfg.task_weight * task
            self.opt_task.zero_grad(set_to_none=True)
            loss.float().backward()
            context.sync_gradients(self.task_tgt)
            self.opt_task.step()
            values.update(gen_loss=loss_gen.item(), updated=1.0)
        return values


def train_feature(
    run: SegRun, task_tgt: Segmenter, source: SegmentationSet
) -> tuple[Segmenter, dict[str, Any]]:
    cfg = run.config.feature
    generator = run.generator("feature")
    step = FeatureStep(run, task_tgt, cfg, run.space.num_classes)
    resume = run.stage_resume(
        "feature",
        {"task_tgt": task_tgt, "disc_feat": step.disc},
        {"task": step.opt_task, "disc": step.opt_disc},
        generator,
    )
    start, extra = resume.restore()
    updates_total = int(extra.get("updates_total", 0))
    transform = train_transform(run, "feature", cfg.crop, True, source, run.target_train)
    sources = endless_batches(run, source, transform, 1, generator)
    targets = endless_batches(run, run.target_train, transform, 1, generator)
    streams = {"source": sources, "target": targets}
    gate = step.gate
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
        values = step(next(sources), next(targets))
        if values["updated"]:
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
