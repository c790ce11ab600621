"""CycleGAN's history of generated images, so discriminators also see older fakes."""

from __future__ import annotations

import torch


class ImagePool:
    """Holds up to ``size`` generated images; each query returns half new and half old ones.

    With ``size=0`` the pool is off and returns its input. Random choices use ``generator``.
    """

    def __init__(self, size: int, generator: torch.Generator):
        self.size, self.generator = size, generator
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif torch.rand(1, generator=self.generator).item() < 0.5:
                slot = int(torch.randint(0, self.size, (1,), generator=self.generator))
                out.append(self.images[slot].clone())
                self.images[slot] = image
            else:
                out.append(image)
        return torch.cat(out, dim=0)

    def state(self) -> torch.Tensor:
        """The held images as one tensor (empty before the first query), for a resume state."""
        return torch.cat(self.images) if self.images else torch.empty(0)

    def load(self, state: torch.Tensor) -> None:
        self.images = [image.unsqueeze(0) for image in state]
