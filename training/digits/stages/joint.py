"""Joint modes: stages 2-4 in one loop, the paper's full objective (Eqs. 6-7).

``joint`` solves Eq. 7 as written: each step makes one update of G_S→T, G_T→S and f_T on one
objective, the pixel terms (Eqs. 2-4) plus f_T's task loss on G_S→T(x_S) and the feature GAN
(Eq. 5). Those last terms reach G_S→T too, scaled by ``joint_generator_weight``: the generator
learns to translate so that f_T classifies the translation correctly and so that the frozen
source model's view of it looks like target to D_feat. Then D_S, D_T and D_feat update.

``alternating`` keeps the generators out of f_T's losses: a pixel step on its own, then a
stage-4 step (D_feat, then f_T) on the detached translation. Both use the stage-4 gate for the
inverted-label terms; f_T learns from the task loss at every step. The paper's authors could
not fit the joint objective in GPU memory for segmentation; digits fit easily.
"""

from __future__ import annotations

import copy

import torch

from cycada.models.digit_networks import DigitTaskNet
from cycada.training.core.batches import EndlessBatches
from cycada.training.core.pixel_adaptation import PixelAdaptation, write_samples
from cycada.training.digits.run import DigitsRun
from cycada.training.digits.stages.feature import FeatureAdaptation
from cycada.training.digits.stages.pixel import build_pixel_adaptation, pixel_domains


def train_joint(
    run: DigitsRun, task_src: DigitTaskNet
) -> tuple[PixelAdaptation, DigitTaskNet, dict]:
    cfg = run.config
    generator = run.generator("joint")
    pixel = build_pixel_adaptation(run, task_src, generator)
    feature = FeatureAdaptation(
        cfg.feature, copy.deepcopy(task_src), copy.deepcopy(task_src), task_always=True
    ).to(run.device)
    x_src, x_tgt = pixel_domains(run)
    y_src = run.source_train.labels.to(run.device)
    batch = cfg.pixel.batch_size
    steps_per_epoch = max(len(x_src), len(x_tgt)) // batch or 1
    networks, optimizers = pixel.resume_state()
    networks.update(task_tgt=feature.task_tgt, disc_feat=feature.disc_feat)
    optimizers.update(task=feature.opt_task, disc_feat=feature.opt_disc)
    resume = run.stage_resume("joint", networks, optimizers, generator)
    start_epoch, extra = resume.restore()
    updates = int(extra.get("generator_updates", 0))
    src_batches = EndlessBatches(len(x_src), batch, generator)
    tgt_batches = EndlessBatches(len(x_tgt), batch, generator)
    total = cfg.joint_epochs * steps_per_epoch
    step = start_epoch * steps_per_epoch
    bar = run.log.progress(total, "joint", initial=step)
    weight = cfg.joint_generator_weight
    pixel.train()
    feature.train()
    for epoch in range(start_epoch, cfg.joint_epochs):
        for _ in range(steps_per_epoch):
            index, x_t = next(src_batches), x_tgt[next(tgt_batches)]
            if cfg.mode == "joint":
                values = joint_step(pixel, feature, x_src[index], y_src[index], x_t, weight)
                losses = {}
            else:
                losses, fake_tgt = pixel.step(x_src[index], x_t, y_src=y_src[index])
                values = feature.step(fake_tgt, y_src[index], x_t)
            updates += int(values["updated"])
            step += 1
            bar.update()
            if step % 10 == 0:
                values = {**losses, **values}
                run.log.scalars("joint", values, step)
                bar.set_postfix(
                    d_acc=f"{values['disc_accuracy']:.2f}", cyc=f"{values['cycle']:.3f}"
                )
            if step % cfg.pixel.sample_every == 0 or step == total:
                write_samples(run.out_dir, pixel, x_src[:8], x_tgt[:8], step)
        resume.save(epoch + 1, {"generator_updates": updates})
    bar.close()
    resume.finish()
    pixel.eval()
    feature.task_tgt.eval()
    return (
        pixel,
        feature.task_tgt,
        {"generator_updates": updates, "disc_input": cfg.feature.disc_input},
    )


def joint_step(
    pixel: PixelAdaptation,
    feature: FeatureAdaptation,
    x_src: torch.Tensor,
    y_src: torch.Tensor,
    x_tgt: torch.Tensor,
    weight: float,
) -> dict[str, float]:
    """One step of Eq. 7: G_S→T, G_T→S and f_T on one objective, then D_S, D_T and D_feat."""
    gate = feature.gate_open()

    def task_side(fake_tgt: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        # the translation's value, with its gradient towards G_S→T scaled by ``weight``
        into_generator = fake_tgt.detach() + weight * (fake_tgt - fake_tgt.detach())
        feature.opt_task.zero_grad(set_to_none=True)
        loss, values = feature.task_objective(into_generator, y_src, x_tgt, gate)
        if gate and weight > 0:
            source_side = feature.source_side_loss(into_generator)
            loss = loss + feature.cfg.generator_weight * source_side
            values["gen_source_side"] = source_side.item()
        return loss, values

    losses, fake_tgt = pixel.step(x_src, x_tgt, extra_loss=task_side, y_src=y_src)
    feature.opt_task.step()
    return {**losses, **feature.update_discriminator(fake_tgt, x_tgt)}
