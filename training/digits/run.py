"""Shared state of one digits run: data, device, paths, evaluation, checkpoint naming."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cycada import configs
from cycada.atomic import make_output_folder
from cycada.errors import ConfigError, DataError
from cycada.models.digit_networks import TASK_NETS, DigitTaskNet, build_task_net
from cycada.models.transforms import fit_images, to_unit_range
from cycada.signals import SignalCounts, stage_signals
from cycada.training.core.device import resolve_device
from cycada.training.core.run_log import RunLog
from cycada.training.core.stage_store import StageStore
from cycada.training.core.stages import Stage
from cycada.training.core.visuals import confusion_png
from cycada.training.digits.config import DigitsRunConfig
from cycada.training.digits.data import DigitSet, load_digits
from cycada.training.digits.metrics import classification_metrics, confusion_matrix, predict

RGB_DOMAINS = ("svhn", "synth")


def choose_model(config: DigitsRunConfig, source: DigitSet, target: DigitSet) -> str:
    """LeNet for grey domains (USPS, MNIST); DTN when either domain is RGB (SVHN, synthetic)."""
    if config.model != "auto":
        return config.model
    return "dtn" if 3 in (source.channels, target.channels) else "lenet"


@dataclass
class DigitDomain:
    """One split as float tensors in [-1, 1] at its native size, with labels."""

    data: DigitSet
    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def from_set(cls, data: DigitSet) -> DigitDomain:
        return cls(data, to_unit_range(data.images), torch.as_tensor(data.labels))

    def fitted(self, channels: int, size: int) -> torch.Tensor:
        return fit_images(self.images, channels, size)

    def split_holdout(self, count: int) -> tuple[DigitDomain, DigitDomain | None]:
        """Every 10th image (evenly thinned to ``count``) held out; the rest to train on."""
        if count <= 0 or len(self.images) < 2:
            return self, None
        held = np.arange(9, len(self.images), 10)
        if len(held) == 0:
            held = np.array([len(self.images) - 1])
        if len(held) > count:
            held = held[np.linspace(0, len(held) - 1, count).round().astype(int)]
        rest = np.setdiff1d(np.arange(len(self.images)), held)
        return self.subset(rest), self.subset(held)

    def subset(self, positions: np.ndarray) -> DigitDomain:
        data = self.data
        picked = DigitSet(
            data.name, data.split, data.images[positions], data.labels[positions], data.class_names
        )
        index = torch.as_tensor(positions)
        return DigitDomain(picked, self.images[index], self.labels[index])


class DigitsRun(StageStore):
    """Everything the stages share. Stage code reads data and writes checkpoints through here."""

    def __init__(
        self,
        config: DigitsRunConfig,
        out_dir: Path,
        stages: Mapping[str, Stage],
        quiet: bool = False,
    ):
        self.config = config
        self.out_dir = out_dir
        self.stages = stages
        self.device = resolve_device(config.device)
        data = config.data

        def load(name: str, split: str) -> DigitDomain:
            digit_set = load_digits(name, split, data.data_root, data.synthetic_size, config.seed)
            return DigitDomain.from_set(digit_set.head(data.max_samples))

        self.source_train = load(data.source, data.source_split)
        if not self.source_train.data.labelled:
            raise DataError(
                f"source {data.source} has no labels; the source domain must be labelled "
                "(folder:PATH needs class subfolders PATH/<class>/)"
            )
        self.source_eval = load(data.source, data.eval_split)
        target_train = load(data.target, data.target_split)
        self.target_holdout: DigitDomain | None = None
        self.target_eval: DigitDomain | None
        if data.eval_set:
            self.target_eval = load(data.eval_set, data.eval_split)
            if not self.target_eval.data.labelled:
                raise DataError(
                    f"evaluation set {data.eval_set} has no labels; --eval-set needs a labelled "
                    "domain (mnist, usps, svhn, synth, folder:PATH with class subfolders)"
                )
        elif target_train.data.labelled:
            self.target_eval = load(data.target, data.eval_split)
        else:
            self.target_eval = None
        if not target_train.data.labelled:  # label-free signals on held-out target images
            target_train, self.target_holdout = target_train.split_holdout(data.label_free_samples)
        self.target_train = target_train
        self.class_names = self.source_train.data.class_names
        if self.target_eval is not None and self.target_eval.data.class_names != self.class_names:
            raise ConfigError(
                f"source classes {self.class_names} differ from target classes "
                f"{self.target_eval.data.class_names}"
            )
        self.model_name = choose_model(config, self.source_train.data, self.target_train.data)
        make_output_folder(out_dir)
        self.log = RunLog(out_dir, quiet=quiet)
        self._source_shares: np.ndarray | None = None

    # -- networks -------------------------------------------------------------------------
    def new_task_net(self) -> DigitTaskNet:
        return build_task_net(self.model_name, len(self.class_names)).to(self.device)

    @property
    def image_channels(self) -> int:
        """Channels of the pixel stage's images: those of the task net's input."""
        return TASK_NETS[self.model_name].in_channels

    # -- seeds ----------------------------------------------------------------------------
    def generator(self, stage: str) -> torch.Generator:
        """Seed torch for ``stage`` and return its data-order generator.

        Called first in every stage, before networks are built, so each stage's result depends
        only on the seed and its inputs, whether earlier stages ran now or came from checkpoints.
        """
        offset = self.stage_seed(stage)
        torch.manual_seed(self.config.seed * 100 + offset)
        return torch.Generator().manual_seed(self.config.seed * 100 + offset)

    # -- checkpoints ----------------------------------------------------------------------
    def fingerprint_common(self, c: Any, stage: str) -> dict[str, Any]:
        # where the data lives and what it is evaluated on change no weights
        data = dataclasses.replace(c.data, data_root="", eval_set="", eval_split="")
        return {"model": c.model, "seed": c.seed, "mode": c.mode, "data": configs.to_dict(data)}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "task": "digits",
            "model": self.model_name,
            "image_channels": self.image_channels,
            "image_size": self.config.pixel.image_size,
            "class_names": self.class_names,
        }

    # -- evaluation -----------------------------------------------------------------------
    def evaluate(
        self,
        model: nn.Module,
        stage: str,
        target_model: nn.Module | None = None,
        write_png: bool = True,
        previous: tuple[str, nn.Module] | None = None,
    ) -> dict[str, Any]:
        """Source and target metrics of ``model`` (``target_model`` on target, if given).

        Without a labelled target evaluation set, ``target_label_free`` holds the label-free
        signals on the held-out target images instead (``previous``: stage and model for the
        agreement).
        """
        results: dict[str, Any] = {}
        for domain_name, domain in (("source", self.source_eval), ("target", self.target_eval)):
            if domain_name == "target" and target_model is not None:
                model = target_model
            if domain is None:
                continue
            predictions = predict(model, domain.images, self.config.eval_batch_size, self.device)
            confusion = confusion_matrix(domain.labels.numpy(), predictions, len(self.class_names))
            metrics = classification_metrics(confusion, self.class_names)
            metrics["dataset"] = f"{domain.data.name}/{domain.data.split}"
            results[domain_name] = metrics
            if write_png:
                title = f"{stage}: {metrics['dataset']} accuracy {metrics['accuracy']:.2%}"
                confusion_png(
                    self.out_dir / "eval" / stage / f"confusion_{domain_name}.png",
                    confusion,
                    self.class_names,
                    title,
                )
        if self.target_holdout is not None:
            results["target_label_free"] = self.label_free(model, previous)
        return results

    @torch.no_grad()
    def label_free(
        self, model: nn.Module, previous: tuple[str, nn.Module] | None = None
    ) -> dict[str, Any]:
        """Mean confidence, class shares against the source labels', agreement with the
        previous stage, on the held-out target images (see ``seg_label_free`` for what they
        can and cannot tell)."""
        domain = self.target_holdout
        if domain is None:
            raise DataError("label-free signals need held-out images of an unlabelled target")
        probabilities = self._probabilities(model, domain.images)
        top, labels = probabilities.max(1)
        classes = len(self.class_names)
        counts = SignalCounts(classes)
        counts.add_probabilities(labels.numpy(), top.numpy())
        if self._source_shares is None:
            source = np.bincount(self.source_train.labels.numpy(), minlength=classes)
            self._source_shares = source / source.sum()
        agreement = None
        if previous is not None:
            before = self._probabilities(previous[1], domain.images).argmax(1)
            agreement = (previous[0], float((before == labels).float().mean()))
        held_out = (f"{domain.data.name}/{domain.data.split} (held out, no labels)", "images")
        return stage_signals(
            counts, self._source_shares, self.class_names, (*held_out, len(labels)), agreement
        )

    def _probabilities(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        was_training = model.training
        model.eval()
        outputs = []
        batch_size = self.config.eval_batch_size
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(self.device)
            outputs.append(model(batch).float().softmax(1).cpu())
        model.train(was_training)
        return torch.cat(outputs)
