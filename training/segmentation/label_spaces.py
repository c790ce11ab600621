"""Label spaces of the segmentation tasks, and the id mappings of each data set into them.

Every segmentation data set yields labels in a run's label space (uint8 ids, 255 = ignore):
``cityscapes19`` (the 19 train ids shared by GTA5, Cityscapes, SYNTHIA and, via CamVid's 11
classes, CamVid) or ``synthia13`` (the 13 classes of the SYNTHIA seasons experiment, Table 6).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

IGNORE = 255


@dataclass(frozen=True)
class LabelSpace:
    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]  # RGB per class

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """(H, W) ids → (H, W, 3) RGB; ignore (and any unknown id) is black."""
        table = np.zeros((256, 3), np.uint8)
        table[: self.num_classes] = np.asarray(self.palette, np.uint8)
        return table[labels]


CITYSCAPES19 = LabelSpace(
    "cityscapes19",
    ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
     "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
     "motorcycle", "bicycle"),
    ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
     (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
     (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
     (0, 80, 100), (0, 0, 230), (119, 11, 32)),
)  # fmt: skip

SYNTHIA13 = LabelSpace(
    "synthia13",
    ("sky", "building", "road", "sidewalk", "fence", "vegetation", "pole", "car",
     "traffic sign", "pedestrian", "bicycle", "lanemarking", "traffic light"),
    ((70, 130, 180), (70, 70, 70), (128, 64, 128), (244, 35, 232), (190, 153, 153),
     (107, 142, 35), (153, 153, 153), (0, 0, 142), (220, 220, 0), (220, 20, 60),
     (119, 11, 32), (255, 255, 255), (250, 170, 30)),
)  # fmt: skip

LABEL_SPACES = {space.name: space for space in (CITYSCAPES19, SYNTHIA13)}


def space_of(classes: tuple[str, ...] | list[str]) -> LabelSpace:
    """The label space whose classes these are, or one of these classes with colours of its
    own (a ``folder:`` mapping's): evenly spread hues, bright and dark in turn."""
    classes = tuple(classes)
    for space in LABEL_SPACES.values():
        if space.classes == classes:
            return space

    palette = []
    for index in range(len(classes)):
        hue = (index * 0.618033988749895) % 1.0  # the golden ratio: neighbours far apart
        red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, 0.95 if index % 2 == 0 else 0.6)
        palette.append((round(red * 255), round(green * 255), round(blue * 255)))
    return LabelSpace("served", classes, tuple(palette))


# Cityscapes label id → train id (GTA5 labels use the same ids). Ids 0..33 and 255/-1 are known.
CITYSCAPES_ID_TO_TRAIN = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
CITYSCAPES_KNOWN_IDS = set(range(34)) | {255}

# CamVid (SegNet version, 0..10, 11 = void) → cityscapes19 train ids
CAMVID_CLASSES = (
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
)
CAMVID_TO_TRAIN = {0: 10, 1: 2, 2: 5, 3: 0, 4: 1, 5: 8, 6: 7, 7: 4, 8: 13, 9: 11, 10: 12}
CAMVID_KNOWN_IDS = set(range(12))

# SYNTHIA RAND-CITYSCAPES class ids → cityscapes19 train ids
SYNTHIA_RAND_TO_TRAIN = {
    3: 0,
    4: 1,
    2: 2,
    21: 3,
    5: 4,
    7: 5,
    15: 6,
    9: 7,
    6: 8,
    16: 9,
    1: 10,
    10: 11,
    17: 12,
    8: 13,
    18: 14,
    19: 15,
    20: 16,
    12: 17,
    11: 18,
}
SYNTHIA_RAND_KNOWN_IDS = set(range(23))

# SYNTHIA video sequences (SEQS) class ids → synthia13 ids (13, 14 are reserved/unused)
SYNTHIA_SEQS_TO_13 = {
    1: 0,
    2: 1,
    3: 2,
    4: 3,
    5: 4,
    6: 5,
    7: 6,
    8: 7,
    9: 8,
    10: 9,
    11: 10,
    12: 11,
    15: 12,
}
SYNTHIA_SEQS_KNOWN_IDS = set(range(16))
# the same 13 classes seen from the cityscapes19 side (for SEQS → cityscapes19 runs)
SYNTHIA_SEQS_TO_TRAIN = {
    1: 10,
    2: 2,
    3: 0,
    4: 1,
    5: 4,
    6: 8,
    7: 5,
    8: 13,
    9: 7,
    10: 11,
    11: 18,
    15: 6,
}


@dataclass(frozen=True)
class LabelMapping:
    """A lookup table from a data set's raw label ids to a label space, with its known ids."""

    table: np.ndarray  # (65536,) uint8: raw id → label-space id or IGNORE
    known: np.ndarray  # (65536,) bool: ids the data set may contain
    evaluated: tuple[int, ...]  # label-space ids this data set can be evaluated on
    source: str = ""  # the mapping file, when the user gave one

    @classmethod
    def from_dict(
        cls, mapping: dict[int, int], known_ids: set[int], source: str = ""
    ) -> LabelMapping:
        """``mapping`` raw id → label-space id; a raw id mapped to 255 is known and ignored."""
        table = np.full(65536, IGNORE, np.uint8)
        known = np.zeros(65536, bool)
        for raw, mapped in mapping.items():
            table[raw] = mapped
        known[list(known_ids | set(mapping))] = True
        evaluated = tuple(sorted(set(mapping.values()) - {IGNORE}))
        return cls(table, known, evaluated, source)

    @classmethod
    def identity(cls, num_classes: int) -> LabelMapping:
        return cls.from_dict({i: i for i in range(num_classes)}, {IGNORE})

    def unexpected(self, raw: np.ndarray) -> list[int]:
        """Raw ids present in ``raw`` that the data set should not contain."""
        ids = np.unique(raw)
        return [int(i) for i in ids if not self.known[int(i)]]

    def apply(self, raw: np.ndarray) -> np.ndarray:
        return self.table[raw]
