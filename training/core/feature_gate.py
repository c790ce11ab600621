"""The feature stage's gate: f_T is updated only while D_feat tells the domains apart.

The paper (appendix A.1) and the reference code update the task network only when the feature
discriminator's accuracy, averaged over its last steps, is above a threshold (60 %): adapting
against a discriminator that cannot separate the domains only adds noise.
"""

from __future__ import annotations

from collections import deque


class FeatureGate:
    """Mean D_feat accuracy over the last ``window`` steps against ``threshold``.

    ``min_steps`` accuracies must have been recorded before the gate can open: the digits
    stage opens from the first step (as the reference's ADDA loop), segmentation waits for a full
    window (one image per domain and step is a noisy accuracy).
    """

    def __init__(self, threshold: float, window: int, min_steps: int = 1):
        self.threshold = threshold
        self.accuracies: deque[float] = deque(maxlen=window)
        self.min_steps = max(1, min(min_steps, window))

    def record(self, accuracy: float) -> None:
        self.accuracies.append(accuracy)

    @property
    def mean_accuracy(self) -> float:
        return sum(self.accuracies) / len(self.accuracies) if self.accuracies else 0.0

    @property
    def is_open(self) -> bool:
        return len(self.accuracies) >= self.min_steps and self.mean_accuracy > self.threshold
