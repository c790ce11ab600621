"""Pixel-level adaptation, paper Eqs. 2-4: the networks, losses and one step, for both tasks.

Both generators and both image discriminators are trained as in CycleGAN (GAN losses both
ways, image pool, cycle L1 both ways, optional identity loss), plus the semantic consistency
loss with the frozen source model f_S (or, as an option on digits, the reference code's classifier
trained alongside). One explicit step: generators first, then discriminators.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cycada.models.generators import build_generator
from cycada.training.core.discriminators import build_image_discriminator
from cycada.training.core.image_pool import ImagePool
from cycada.training.core.losses import (
    AlongsideSemanticLoss,
    CycleLoss,
    GANLoss,
    SemanticConsistencyLoss,
)
from cycada.training.core.pixel_config import PixelConfig
from cycada.training.core.visuals import image_grid, write_png

PIXEL_NETWORKS = ("gen_src2tgt", "gen_tgt2src", "disc_src", "disc_tgt")


def _set_requires_grad(modules: list[nn.Module], flag: bool) -> None:
    for module in modules:
        for parameter in module.parameters():
            parameter.requires_grad_(flag)


class PixelAdaptation(nn.Module):
    """G_S→T, G_T→S, D_S, D_T with their losses, optimizers and one training step."""

    def __init__(
        self,
        cfg: PixelConfig,
        channels: int,
        task_src: nn.Module | None,
        generator: torch.Generator,
        amp: bool = False,
        alongside_classifier: nn.Module | None = None,
    ):
        """``task_src``: the frozen f_S of the semantic loss (None: no semantic loss, as when the
        networks are built only to load weights). ``alongside_classifier``: a freshly initialised
        task network, needed with ``semantic_model: alongside``."""
        super().__init__()
        self.cfg = cfg
        # mixed precision (CUDA only): how the semantic loss fits beside CycleGAN at 400x400
        self.amp = amp
        self.scaler_gen = torch.amp.GradScaler("cuda", enabled=amp)
        self.scaler_disc = torch.amp.GradScaler("cuda", enabled=amp)
        gen_width, disc_width = cfg.generator_width, cfg.discriminator_width
        self.gen_src2tgt = build_generator(cfg.generator, channels, channels, gen_width)
        self.gen_tgt2src = build_generator(cfg.generator, channels, channels, gen_width)
        self.disc_src = build_image_discriminator(cfg.discriminator, channels, disc_width)
        self.disc_tgt = build_image_discriminator(cfg.discriminator, channels, disc_width)
        self.gan_loss = GANLoss(cfg.gan_mode)
        self.cycle_loss = CycleLoss()
        betas = (cfg.beta1, cfg.beta2)
        self.semantic_loss: SemanticConsistencyLoss | None = None
        self.alongside: AlongsideSemanticLoss | None = None
        # task_src None: networks built only to load weights, no semantic loss
        if cfg.lambda_semantic > 0 and cfg.semantic_model == "alongside" and task_src is not None:
            if alongside_classifier is None:
                raise ValueError(
                    "pixel.semantic_model=alongside trains a classifier on labelled source "
                    "batches; only the digits pixel stage provides them (use 'source')"
                )
            self.alongside = AlongsideSemanticLoss(
                alongside_classifier, betas=betas, gate_loss=cfg.semantic_gate_loss
            )
        elif cfg.lambda_semantic > 0 and task_src is not None:
            self.semantic_loss = SemanticConsistencyLoss(copy.deepcopy(task_src))
        self.opt_gen = torch.optim.Adam(
            [*self.gen_src2tgt.parameters(), *self.gen_tgt2src.parameters()], lr=cfg.lr, betas=betas
        )
        self.opt_disc = torch.optim.Adam(
            [*self.disc_src.parameters(), *self.disc_tgt.parameters()], lr=cfg.lr, betas=betas
        )
        self.grad_sync = None  # set under data parallelism: averages gradients of modules
        self.pool_src = ImagePool(cfg.pool_size, generator)
        self.pool_tgt = ImagePool(cfg.pool_size, generator)

    def set_lr(self, lr: float) -> None:
        for optimizer in (self.opt_gen, self.opt_disc):
            for group in optimizer.param_groups:
                group["lr"] = lr

    def networks(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in PIXEL_NETWORKS}

    def resume_state(self) -> tuple[dict[str, nn.Module], dict[str, torch.optim.Optimizer]]:
        """What a resumed stage needs: the four networks, their optimizers and, with the
        alongside semantic classifier, that classifier and its optimizer too."""
        networks = self.networks()
        optimizers = {"gen": self.opt_gen, "disc": self.opt_disc}
        if self.alongside is not None:
            networks["semantic_classifier"] = self.alongside
            optimizers["semantic_classifier"] = self.alongside.optimizer
        return networks, optimizers

    def step(
        self,
        x_src: torch.Tensor,
        x_tgt: torch.Tensor,
        extra_loss: Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]] | None = None,
        y_src: torch.Tensor | None = None,
    ) -> tuple[dict[str, float], torch.Tensor]:
        """One generator update, then one discriminator update. Returns losses and G_S→T(x_src).

        ``y_src``: the source labels, needed (only) by the alongside semantic classifier, which
        takes its own supervised step after the discriminators.

        ``extra_loss(G_S→T(x_src))`` (joint mode) adds terms of other networks to the generator
        objective before the one backward pass, so their gradients reach G_S→T too; the caller
        zeroes and steps those networks' optimizers."""
        discs = [self.disc_src, self.disc_tgt]
        autocast = torch.autocast(x_src.device.type, dtype=torch.float16, enabled=self.amp)
        # --- generators: fool D_T and D_S, reconstruct, keep f_S's labels (Eqs. 2-4)
        _set_requires_grad(discs, False)
        with autocast:
            losses, total, fake_tgt, fake_src = self._generator_losses(x_src, x_tgt, y_src)
            if extra_loss is not None:
                extra, extra_values = extra_loss(fake_tgt)
                total = total + extra
                losses.update(extra_values)
        self.opt_gen.zero_grad(set_to_none=True)
        self.scaler_gen.scale(total).backward()
        if self.grad_sync is not None:
            self.grad_sync(self.gen_src2tgt, self.gen_tgt2src)
        self.scaler_gen.step(self.opt_gen)
        self.scaler_gen.update()
        # --- discriminators: real vs (pooled) translated, both domains
        _set_requires_grad(discs, True)
        with autocast:
            pooled_tgt = self.pool_tgt.query(fake_tgt.detach())
            pooled_src = self.pool_src.query(fake_src.detach())
            loss_disc_tgt = 0.5 * (
                self.gan_loss(self.disc_tgt(x_tgt), True)
                + self.gan_loss(self.disc_tgt(pooled_tgt), False)
            )
            loss_disc_src = 0.5 * (
                self.gan_loss(self.disc_src(x_src), True)
                + self.gan_loss(self.disc_src(pooled_src), False)
            )
        self.opt_disc.zero_grad(set_to_none=True)
        self.scaler_disc.scale(loss_disc_tgt + loss_disc_src).backward()
        if self.grad_sync is not None:
            self.grad_sync(self.disc_src, self.disc_tgt)
        self.scaler_disc.step(self.opt_disc)
        self.scaler_disc.update()
        losses.update(disc_tgt=loss_disc_tgt.item(), disc_src=loss_disc_src.item())
        if self.alongside is not None:
            losses["semantic_classifier"] = self.alongside.train_step(x_src, y_src)
        return losses, fake_tgt.detach()

    def _generator_losses(
        self, x_src: torch.Tensor, x_tgt: torch.Tensor, y_src: torch.Tensor | None = None
    ):
        cfg = self.cfg
        fake_tgt = self.gen_src2tgt(x_src)
        rec_src = self.gen_tgt2src(fake_tgt)
        fake_src = self.gen_tgt2src(x_tgt)
        rec_tgt = self.gen_src2tgt(fake_src)
        loss_gan = cfg.forward_gan_weight * self.gan_loss(
            self.disc_tgt(fake_tgt), True
        ) + self.gan_loss(self.disc_src(fake_src), True)
        loss_cycle = self.cycle_loss(rec_src, x_src) + self.cycle_loss(rec_tgt, x_tgt)
        total = cfg.lambda_gan * loss_gan + cfg.lambda_cycle * loss_cycle
        losses = {"gen_gan": loss_gan.item(), "cycle": loss_cycle.item()}
        if self.semantic_loss is not None:
            loss_sem = self.semantic_loss(fake_tgt, x_src) + self.semantic_loss(fake_src, x_tgt)
            total = total + cfg.lambda_semantic * loss_sem
            losses["semantic"] = loss_sem.item()
        if self.alongside is not None:
            if y_src is None:
                raise ValueError("the alongside semantic classifier needs the source labels")
            if self.alongside.active:
                loss_sem = self.alongside.generator_loss(fake_tgt, y_src, fake_src, x_tgt)
                total = total + cfg.lambda_semantic * loss_sem
                losses["semantic"] = loss_sem.item()
        if cfg.lambda_identity > 0:
            loss_idt = F.l1_loss(self.gen_src2tgt(x_tgt), x_tgt) + F.l1_loss(
                self.gen_tgt2src(x_src), x_src
            )
            total = total + cfg.lambda_identity * loss_idt
            losses["identity"] = loss_idt.item()
        return losses, total, fake_tgt, fake_src


def linear_decay(base: float, step: int, total: int, start_fraction: float) -> float:
    """CycleGAN's schedule: ``base`` up to ``start_fraction`` of ``total`` steps, then a linear
    decay towards 0 (reached one step after the last)."""
    start = int(start_fraction * total)
    if step < start:
        return base
    return base * (1.0 - (step - start) / max(1, total - start))


@torch.no_grad()
def translate(
    generator: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 500
) -> torch.Tensor:
    """Apply a generator (eval mode) to float images in batches; returns CPU tensors."""
    was_training = generator.training
    generator.eval()
    out = [
        generator(images[i : i + batch_size].to(device)).cpu()
        for i in range(0, len(images), batch_size)
    ]
    generator.train(was_training)
    return torch.cat(out)


def write_samples(
    out_dir: Path,
    pixel: PixelAdaptation,
    x_src: torch.Tensor,
    x_tgt: torch.Tensor,
    step: int,
    scale: int = 2,
) -> None:
    """Grid: source | G_S→T(source) | reconstruction || target | G_T→S(target) | reconstruction."""
    with torch.no_grad():
        was_training = pixel.training
        pixel.eval()
        fake_tgt = pixel.gen_src2tgt(x_src)
        fake_src = pixel.gen_tgt2src(x_tgt)
        columns = [
            x_src,
            fake_tgt,
            pixel.gen_tgt2src(fake_tgt),
            x_tgt,
            fake_src,
            pixel.gen_src2tgt(fake_src),
        ]
        pixel.train(was_training)
    write_png(
        out_dir / "samples" / f"pixel_step{step:06d}.png",
        image_grid([c.float().cpu() for c in columns], scale=scale),
    )
