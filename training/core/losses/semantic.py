"""Semantic consistency loss L_sem, paper Eq. 4."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SemanticConsistencyLoss(nn.Module):
    """Cross-entropy of the FROZEN source model f_S on translated images against f_S's argmax on
    the originals: L_task(f_S, G(X), p(f_S, X)).

    ``classifier`` is frozen here (eval mode, no gradients to its weights); gradients still flow
    through it into the generator. Shapes: ``translated`` and ``original`` (N, C, H, W), sizes may
    differ (the classifier fits its input). Works for classification (N, K) and segmentation
    (N, K, H, W) outputs; segmentation pseudo-labels are resized (nearest) to the translated
    prediction's size. Eq. 4 sums this for G_S→T on source and G_T→S on target images.
    """

    def __init__(self, classifier: nn.Module):
        super().__init__()
        classifier.eval()
        for parameter in classifier.parameters():
            parameter.requires_grad_(False)
        self.classifier = classifier

    def train(self, mode: bool = True) -> SemanticConsistencyLoss:
        super().train(mode)
        self.classifier.eval()  # frozen: dropout and batch-norm statistics never change
        return self

    def forward(self, translated: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pseudo_labels = self.classifier(original).argmax(dim=1)
        logits = self.classifier(translated)
        if logits.dim() == 4 and pseudo_labels.shape[-2:] != logits.shape[-2:]:
            pseudo_labels = F.interpolate(
                pseudo_labels[:, None].float(), size=logits.shape[-2:], mode="nearest"
            )[:, 0].long()
        return F.cross_entropy(logits, pseudo_labels)


class AlongsideSemanticLoss(nn.Module):
    """The reference code's variant of Eq. 4, a documented deviation from the paper (an option).

    Instead of the frozen f_S, a classifier trained from scratch on the labelled source beside
    the generators (Adam, lr 1e-3) reads the translations. G_S→T's term is against the true source
    labels, G_T→S's against the classifier's argmax on the target originals, and both terms are
    off while the classifier's last training loss is above ``gate_loss`` (1.0 in the reference),
    so the generators first learn the style unconstrained. The classifier is never updated by
    the generators' loss, only by :meth:`train_step` on labelled source.
    """

    def __init__(
        self,
        classifier: nn.Module,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.5, 0.999),
        gate_loss: float = 1.0,
    ):
        super().__init__()
        self.classifier = classifier
        self.optimizer = torch.optim.Adam(classifier.parameters(), lr=lr, betas=betas)
        self.gate_loss = gate_loss
        # a buffer, so that a resumed stage gates its first step as the uninterrupted one did
        self.register_buffer("last_loss", torch.tensor(float("inf")))

    @property
    def active(self) -> bool:
        """Whether the generators get the semantic terms this step."""
        return float(self.last_loss) <= self.gate_loss

    def generator_loss(
        self,
        translated_src: torch.Tensor,
        labels_src: torch.Tensor,
        translated_tgt: torch.Tensor,
        original_tgt: torch.Tensor,
    ) -> torch.Tensor:
        """L_sem for both generators; gradients reach the images, never the classifier."""
        for parameter in self.classifier.parameters():
            parameter.requires_grad_(False)
        with torch.no_grad():
            pseudo_labels = self.classifier(original_tgt).argmax(dim=1)
        loss = F.cross_entropy(self.classifier(translated_src), labels_src) + F.cross_entropy(
            self.classifier(translated_tgt), pseudo_labels
        )
        for parameter in self.classifier.parameters():
            parameter.requires_grad_(True)
        return loss

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """One supervised step of the classifier on labelled source; returns and keeps its loss."""
        loss = F.cross_entropy(self.classifier(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.last_loss.fill_(loss.item())
        return float(self.last_loss)
