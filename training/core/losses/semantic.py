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
