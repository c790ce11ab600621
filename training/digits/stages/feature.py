"""Stage 4: feature-level adaptation of f_T, paper Eq. 5 (with the task loss of Eq. 6).

D_feat learns to tell the representation of (translated) source images under a frozen copy of
the stage-3 network (``feature.reference: target_init``, the reference code's ADDA step) or of
f_S (``source``, Eq. 5's f_S(G_S→T(X_S)) read literally) from f_T's representation of real
target images. f_T is updated with the inverted domain label only while D_feat's accuracy over
the last ``gate_window`` batches is above ``gate_threshold`` (appendix A.1: 60%, last batch for
digits). If a whole epoch passes without such an update the stage stops: "no suitable
discriminator".
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from cycada.models.digit_networks import DigitTaskNet
from cycada.training.core.batches import EndlessBatches
from cycada.training.core.discriminators import FeatureDiscriminator
from cycada.training.core.feature_gate import FeatureGate
from cycada.training.core.losses import FeatureGANLoss, TaskLoss, domain_accuracy
from cycada.training.core.losses.feature_gan import SOURCE_DOMAIN, TARGET_DOMAIN
from cycada.training.digits.config import FeatureStageConfig
from cycada.training.digits.run import DigitsRun


class FeatureAdaptation(nn.Module):
    """f_T, D_feat and the frozen source-side network, with one gated training step."""

    def __init__(
        self,
        cfg: FeatureStageConfig,
        task_tgt: DigitTaskNet,
        reference: DigitTaskNet,
        task_always: bool = False,
    ):
        super().__init__()
        self.cfg = cfg
        # joint mode (Eq. 7) trains f_T on translated source at every step, gate open or not
        self.task_always = task_always
        self.task_tgt = task_tgt
        self.reference = reference
        for parameter in self.reference.parameters():
            parameter.requires_grad_(False)
        width = task_tgt.num_classes if cfg.disc_input == "scores" else task_tgt.feature_dim
        self.disc_feat = FeatureDiscriminator(width)
        betas = (cfg.beta1, cfg.beta2)
        self.opt_task = torch.optim.Adam(task_tgt.parameters(), lr=cfg.lr, betas=betas)
        self.opt_disc = torch.optim.Adam(
            self.disc_feat.parameters(), lr=cfg.disc_lr or cfg.lr, betas=betas
        )
        self.gan_loss = FeatureGANLoss()
        self.task_loss = TaskLoss()
        self.gate = FeatureGate(cfg.gate_threshold, cfg.gate_window)

    def train(self, mode: bool = True) -> FeatureAdaptation:
        """Training puts f_T and the frozen copy in the modes ``cfg.network_mode`` names; the
        discriminator always trains."""
        super().train(mode)
        if mode and self.cfg.network_mode == "eval":
            self.task_tgt.eval()
        if mode and self.cfg.network_mode != "train":
            self.reference.eval()
        return self

    def _represent(self, net: DigitTaskNet, x: torch.Tensor) -> torch.Tensor:
        features, scores = net.forward_with_features(x)
        return scores if self.cfg.disc_input == "scores" else features

    def gate_open(self) -> bool:
        return self.gate.is_open

    def update_discriminator(self, x_src: torch.Tensor, x_tgt: torch.Tensor) -> dict[str, float]:
        """One D_feat step: the frozen copy on (translated) source against f_T on target."""
        with torch.no_grad():
            source_repr = self._represent(self.reference, x_src)
            target_repr = self._represent(self.task_tgt, x_tgt)
        source_out = self.disc_feat(source_repr)
        target_out = self.disc_feat(target_repr)
        loss_disc = self.gan_loss(source_out, SOURCE_DOMAIN) + self.gan_loss(
            target_out, TARGET_DOMAIN
        )
        self.opt_disc.zero_grad(set_to_none=True)
        loss_disc.backward()
        self.opt_disc.step()
        accuracy = domain_accuracy(source_out.detach(), target_out.detach())
        self.gate.record(accuracy)
        return {"disc_loss": loss_disc.item(), "disc_accuracy": accuracy}

    def task_objective(
        self, x_src: torch.Tensor, y_src: torch.Tensor, x_tgt: torch.Tensor, gate: bool
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """f_T's loss: the inverted domain label on target (when the gate is open) plus the task
        loss on (translated) source. Gradients reach whatever produced ``x_src``."""
        cfg = self.cfg
        total = torch.zeros((), device=x_tgt.device)
        values: dict[str, float] = {"updated": float(gate)}
        if gate:
            scores = self.disc_feat(self._represent(self.task_tgt, x_tgt))
            loss_gen = self.gan_loss(scores, SOURCE_DOMAIN)  # inverted label
            total = total + cfg.generator_weight * loss_gen
            values["gen_loss"] = loss_gen.item()
        if cfg.task_weight > 0 or self.task_always:
            loss_task = self.task_loss(self.task_tgt(x_src), y_src)
            total = total + max(cfg.task_weight, float(self.task_always)) * loss_task
            values["task_loss"] = loss_task.item()
        return total, values

    def source_side_loss(self, x_src: torch.Tensor) -> torch.Tensor:
        """Eq. 5's term for G_S→T (joint mode): the frozen copy's representation of translated
        source, pushed to look like target to D_feat (the min player's side of the source set)."""
        return self.gan_loss(self.disc_feat(self._represent(self.reference, x_src)), TARGET_DOMAIN)

    def step(
        self, x_src: torch.Tensor, y_src: torch.Tensor, x_tgt: torch.Tensor
    ) -> dict[str, float]:
        """D_feat update, then (if the gate is open) an f_T update. Returns logged values."""
        values = self.update_discriminator(x_src, x_tgt)
        gate = self.gate_open()
        if not gate and not self.task_always:
            return {**values, "updated": 0.0}
        total, task_values = self.task_objective(x_src, y_src, x_tgt, gate)
        self.opt_task.zero_grad(set_to_none=True)
        total.backward()
        self.opt_task.step()
        return {**values, **task_values}


def train_feature(
    run: DigitsRun,
    task_init: DigitTaskNet,
    source_images: torch.Tensor,
    reference: DigitTaskNet | None = None,
) -> tuple[DigitTaskNet, dict]:
    """Adapt a copy of ``task_init``; ``source_images`` are G_S→T(X_S) (or X_S without pixel).

    D_feat's source side is a frozen copy of ``reference`` (default: ``task_init``)."""
    cfg = run.config.feature
    generator = run.generator("feature")
    frozen = copy.deepcopy(reference if reference is not None else task_init)
    adaptation = FeatureAdaptation(cfg, copy.deepcopy(task_init), frozen).to(run.device)
    x_src = source_images.to(run.device)
    y_src = run.source_train.labels.to(run.device)
    x_tgt = run.target_train.images.to(run.device)
    steps_per_epoch = max(len(x_src), len(x_tgt)) // cfg.batch_size or 1
    resume = run.stage_resume(
        "feature",
        {"task_tgt": adaptation.task_tgt, "disc_feat": adaptation.disc_feat},
        {"task": adaptation.opt_task, "disc": adaptation.opt_disc},
        generator,
    )
    start_epoch, extra = resume.restore()
    updates_total = int(extra.get("updates_total", 0))
    stop_reason = "max_epochs"
    src_batches = EndlessBatches(len(x_src), cfg.batch_size, generator)
    tgt_batches = EndlessBatches(len(x_tgt), cfg.batch_size, generator)
    step = start_epoch * steps_per_epoch
    bar = run.log.progress(cfg.max_epochs * steps_per_epoch, "feature", initial=step)
    adaptation.train()
    for epoch in range(start_epoch, cfg.max_epochs):
        updates = 0
        for _ in range(steps_per_epoch):
            index = next(src_batches)
            values = adaptation.step(x_src[index], y_src[index], x_tgt[next(tgt_batches)])
            updates += int(values["updated"])
            step += 1
            bar.update()
            if step % 10 == 0:
                bar.set_postfix(d_acc=f"{values['disc_accuracy']:.2f}", updates=updates)
                run.log.scalars("feature", values, step)
        updates_total += updates
        run.log.scalars("feature", {"updates_per_epoch": updates}, epoch)
        resume.save(epoch + 1, {"updates_total": updates_total})
        if updates == 0:
            stop_reason = "no_suitable_discriminator"
            run.log.info(f"feature: no suitable discriminator in epoch {epoch + 1}; stopping")
            break
    bar.close()
    resume.finish()
    adaptation.task_tgt.eval()
    summary = {
        "stop_reason": stop_reason,
        "generator_updates": updates_total,
        "disc_input": cfg.disc_input,
        "reference": cfg.reference,
    }
    return adaptation.task_tgt, summary
