"""Joint mode: stages 2-4 in one loop, the paper's full objective (Eqs. 6-7).

Each step updates the generators and image discriminators (pixel step), then D_feat and f_T:
f_T always learns from G_S→T(x_S) with the source labels, and from the inverted feature-GAN
label while D_feat is accurate enough (same gate as stage 4). As Eq. 5 writes it, the source side
of D_feat sees the frozen f_S on translated source. The paper's authors could not fit this in
GPU memory for segmentation; digits fit easily.
"""

from __future__ import annotations

import copy

from torch import nn

from cycada.training.data.batches import EndlessBatches
from cycada.training.digits_run import DigitsRun
from cycada.training.models.task_nets import DigitTaskNet
from cycada.training.stages.feature import FeatureAdaptation
from cycada.training.stages.pixel import PixelAdaptation, pixel_domains, write_samples


def train_joint(
    run: DigitsRun, task_src: DigitTaskNet
) -> tuple[PixelAdaptation, DigitTaskNet, dict]:
    cfg = run.config
    generator = run.generator("joint")
    pixel = PixelAdaptation(cfg.pixel, run.image_channels, task_src, generator).to(run.device)
    feature = FeatureAdaptation(
        cfg.feature, copy.deepcopy(task_src), copy.deepcopy(task_src), task_always=True
    ).to(run.device)
    x_src, x_tgt = pixel_domains(run)
    y_src = run.source_train.labels.to(run.device)
    batch = cfg.pixel.batch_size
    steps_per_epoch = max(len(x_src), len(x_tgt)) // batch or 1
    networks: dict[str, nn.Module] = {
        **pixel.networks(),
        "task_tgt": feature.task_tgt,
        "disc_feat": feature.disc_feat,
    }
    optimizers = {
        "gen": pixel.opt_gen,
        "disc": pixel.opt_disc,
        "task": feature.opt_task,
        "disc_feat": feature.opt_disc,
    }
    resume = run.stage_resume("joint", networks, optimizers, generator)
    start_epoch, extra = resume.restore()
    updates = int(extra.get("generator_updates", 0))
    src_batches = EndlessBatches(len(x_src), batch, generator)
    tgt_batches = EndlessBatches(len(x_tgt), batch, generator)
    total = cfg.joint_epochs * steps_per_epoch
    step = start_epoch * steps_per_epoch
    bar = run.log.progress(total, "joint", initial=step)
    pixel.train()
    feature.train()
    for epoch in range(start_epoch, cfg.joint_epochs):
        for _ in range(steps_per_epoch):
            index, x_t = next(src_batches), x_tgt[next(tgt_batches)]
            losses, fake_tgt = pixel.step(x_src[index], x_t)
            values = feature.step(fake_tgt, y_src[index], x_t)
            updates += int(values["updated"])
            step += 1
            bar.update()
            if step % 10 == 0:
                run.log.scalars("joint", {**losses, **values}, step)
                bar.set_postfix(
                    d_acc=f"{values['disc_accuracy']:.2f}", cyc=f"{losses['cycle']:.3f}"
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
