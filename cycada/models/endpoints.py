"""What export and serving both know of a served model: its endpoint (the network, what it
does, how its frames are padded) and the record that rebuilds its network."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from cycada.errors import CheckpointError
from cycada.models.digit_networks import build_task_net
from cycada.models.generators import build_generator
from cycada.models.segmenters import build_segmenter

Kind = Literal["segment", "translate", "classify"]


@dataclass
class Endpoint:
    """One served model: its network, what it does, and what export and serving need to know."""

    name: str
    kind: Kind
    network: nn.Module
    multiple: int  # height and width are padded to a multiple of this inside the graph
    in_channels: int
    out_channels: int = 0
    class_names: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    builder: dict[str, Any] = field(default_factory=dict)  # how to rebuild the network

    def describe(self) -> str:
        return f"{self.name} ({self.kind}, from {self.meta.get('checkpoint', '?')})"


def build_network(builder: dict[str, Any]) -> nn.Module:
    """The (untrained) network an endpoint's ``builder`` record describes."""
    kind = builder["type"]
    if kind == "segmenter":
        return build_segmenter(builder["name"], builder["classes"])
    if kind == "task_net":
        return build_task_net(builder["name"], builder["classes"])
    if kind == "generator":
        channels = builder["channels"]
        return build_generator(builder["name"], channels, channels, builder["width"])
    raise CheckpointError(f"unknown network type '{kind}'")
