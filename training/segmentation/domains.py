"""The data sets of one segmentation run: labelled source, target, held-out target, evaluation.

- source: a labelled domain (``folder:IMAGES`` or ``video:PATH`` are refused);
- target: any domain; its labels, if any, are never used for training. ``video:PATH`` frames
  are extracted once into ``OUT/target_frames/``;
- evaluation: ``data.eval_set`` (any labelled domain) at ``data.eval_split``; without it the
  target's own ``eval_split``, which must be labelled; for an unlabelled target (``video:``,
  ``folder:IMAGES``) there is then no labelled evaluation at all;
- held-out target: for an unlabelled target, every 10th image (up to
  ``data.label_free_frames``) stays out of training; the label-free signals are measured there.
  With a labelled evaluation set they are measured on its images instead (labels unused), so
  every run has them: export records them as the served model's baseline, and the stage
  verdict compares stages by them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cycada.errors import DataError
from cycada.training.segmentation import label_spaces as ls
from cycada.training.segmentation.config import SegDataConfig
from cycada.training.segmentation.data import (
    SegmentationSet,
    is_unlabelled_domain,
    load_segmentation,
    unlabelled_set,
)
from cycada.training.segmentation.videos import FrameSampling, extract_frames, load_frame_index

HOLDOUT_EVERY = 10
LABELLED_EXAMPLES = "camvid, cityscapes, folder:IMAGES:LABELS[:MAPPING]"


@dataclass
class SegRunData:
    source_train: SegmentationSet
    target_train: SegmentationSet
    target_holdout: SegmentationSet | None  # unlabelled target images kept out of training
    evaluation: SegmentationSet | None  # the labelled evaluation set, when there is one
    signal_evaluation: SegmentationSet | None = None  # its images the signals are measured on

    @property
    def signal_set(self) -> SegmentationSet | None:
        """Where the label-free signals are measured: the held-out target frames, else up to
        ``count`` evenly spaced images of the labelled evaluation set."""
        return self.target_holdout or self.signal_evaluation

    def describe_evaluation(self) -> dict[str, str | None]:
        """What metrics.json, the tables and the log say about how the run was evaluated."""
        labelled = self.evaluation
        holdout = self.target_holdout
        return {
            "labelled": f"{labelled.name}/{labelled.split}" if labelled else None,
            "label_free": (
                f"{len(holdout)} held-out frames of {holdout.name} (no labels)" if holdout else None
            ),
        }


def cap(dataset: SegmentationSet, count: int) -> SegmentationSet:
    """The first ``count`` items of a split (all when count <= 0)."""
    if count <= 0 or count >= len(dataset):
        return dataset
    return subset(dataset, list(range(count)))


def subset(dataset: SegmentationSet, positions: list[int]) -> SegmentationSet:
    return SegmentationSet(
        dataset.name,
        dataset.split,
        [dataset.items[i] for i in positions],
        dataset.mapping,
        dataset.space,
        dataset.label_reader,
    )


def split_holdout(
    dataset: SegmentationSet, count: int
) -> tuple[SegmentationSet, SegmentationSet | None]:
    """Every 10th image (evenly thinned to ``count``) held out; the rest to train on."""
    held = [i for i in range(len(dataset)) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
    if count <= 0 or len(dataset) < 2:
        return dataset, None
    if not held:
        held = [len(dataset) - 1]
    if len(held) > count:
        held = [held[i] for i in np.linspace(0, len(held) - 1, count).round().astype(int)]
    chosen = set(held)
    rest = [i for i in range(len(dataset)) if i not in chosen]
    return subset(dataset, rest), subset(dataset, held)


def load_target(
    data: SegDataConfig,
    out_dir: Path,
    space: ls.LabelSpace,
    log: Callable[[str], None],
    is_main: bool,
    barrier: Callable[[], None],
    quiet: bool,
) -> SegmentationSet:
    if not data.target.startswith("video:"):
        root = data.target_root or data.data_root
        return load_segmentation(data.target, data.target_split, root, space)
    spec = data.target[len("video:") :]
    frames_root = out_dir / "target_frames"
    if is_main:
        sampling = FrameSampling(
            data.target_fps, data.target_max_frames, data.target_dedup, data.resize_width
        )
        index = extract_frames(spec, frames_root, sampling, log=log, quiet=quiet)
    barrier()
    if not is_main:
        index = load_frame_index(frames_root)
    return unlabelled_set(data.target, index.frames, space)


def load_evaluation(data: SegDataConfig, space: ls.LabelSpace) -> SegmentationSet | None:
    if data.eval_set:
        if is_unlabelled_domain(data.eval_set):
            raise DataError(
                f"evaluation set {data.eval_set} has no labels; --eval-set needs a labelled "
                f"domain ({LABELLED_EXAMPLES})"
            )
        name, root = data.eval_set, data.eval_root or data.data_root
    elif is_unlabelled_domain(data.target):
        return None
    else:
        name, root = data.target, data.target_root or data.data_root
    evaluation = load_segmentation(name, data.eval_split, root, space)
    if not evaluation.labelled:
        missing = sum(item.label is None for item in evaluation.items)
        hint = "" if data.eval_set else "; pass a labelled --eval-set"
        raise DataError(
            f"evaluation set {name}/{data.eval_split} has {missing} of {len(evaluation)} "
            f"images without labels{hint}"
        )
    return evaluation


def load_run_data(
    data: SegDataConfig,
    out_dir: Path,
    space: ls.LabelSpace,
    eval_max_samples: int,
    log: Callable[[str], None],
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
    quiet: bool = False,
) -> SegRunData:
    if is_unlabelled_domain(data.source):
        raise DataError(
            f"source {data.source} has no labels; the source domain must be labelled "
            f"({LABELLED_EXAMPLES}, gta5, synthia)"
        )
    source_root = data.source_root or data.data_root
    source = load_segmentation(data.source, data.source_split, source_root, space)
    if not source.labelled:
        missing = sum(item.label is None for item in source.items)
        raise DataError(
            f"source {data.source}/{data.source_split} has {missing} of {len(source)} images "
            "without labels; the source domain must be labelled"
        )
    evaluation = load_evaluation(data, space)
    target = load_target(data, out_dir, space, log, is_main, barrier, quiet)
    holdout = None
    if is_unlabelled_domain(data.target):
        target, holdout = split_holdout(target, data.label_free_frames)
    run_data = SegRunData(
        cap(source, data.max_samples),
        cap(target, data.max_samples),
        holdout,
        cap(evaluation, eval_max_samples) if evaluation is not None else None,
    )
    if holdout is None and run_data.evaluation is not None and data.label_free_frames > 0:
        run_data.signal_evaluation = thin(run_data.evaluation, data.label_free_frames)
    return run_data


def thin(dataset: SegmentationSet, count: int) -> SegmentationSet:
    """At most ``count`` evenly spaced items of ``dataset``."""
    if len(dataset) <= count:
        return dataset
    return subset(dataset, list(np.linspace(0, len(dataset) - 1, count).round().astype(int)))
