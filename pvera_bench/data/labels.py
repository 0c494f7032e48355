"""Label rules: how a TFDS example becomes a VTAB-1k class index (docs: vtab1k.md, "Derived labels").

A task config names its rule (``label: clevr_dist``); the rule is looked up in :data:`RULES`.
Adding a rule is one decorated function here. The folder source never uses these: its text files
already hold the derived labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np


@dataclass(frozen=True)
class LabelRule:
    name: str
    fn: Callable[[Mapping], int]
    num_classes: int | None   # fixed by the rule; None: the ClassLabel feature ``feature`` decides
    feature: str              # the top-level TFDS feature the rule reads
    doc: str

    def __call__(self, example: Mapping) -> int:
        return int(self.fn(example))


RULES: dict[str, LabelRule] = {}


def rule(name: str, *, feature: str, num_classes: int | None = None):
    def deco(fn: Callable[[Mapping], int]) -> Callable[[Mapping], int]:
        RULES[name] = LabelRule(name, fn, num_classes, feature, (fn.__doc__ or "").strip())
        return fn

    return deco


def get_rule(name: str) -> LabelRule:
    try:
        return RULES[name]
    except KeyError:
        raise KeyError(f"unknown label rule {name!r}; known: {', '.join(sorted(RULES))}") from None


def largest_below(thresholds, d: float) -> int:
    """The largest index ``i`` with ``thresholds[i] < d`` (-1 when there is none), as task_adaptation."""
    return int(np.searchsorted(np.asarray(thresholds, dtype=np.float64), d, side="left")) - 1


def _field(name: str):
    def fn(ex: Mapping) -> int:
        return int(ex[name])

    fn.__doc__ = f"The ClassLabel feature ``{name}`` as is."
    return fn


for _name in ("label", "label_azimuth", "label_elevation"):
    rule(_name, feature=_name)(_field(_name))

CLEVR_DIST_THRESHOLDS = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)
KITTI_DIST_THRESHOLDS = (-100.0, 8.0, 20.0, 999.0)
KITTI_NO_VEHICLE = 1000.0


@rule("clevr_count", feature="objects", num_classes=8)
def clevr_count(ex: Mapping) -> int:
    """Number of objects minus 3 (3..10 objects -> 0..7)."""
    return len(np.asarray(ex["objects"]["size"]).reshape(-1)) - 3


@rule("clevr_dist", feature="objects", num_classes=6)
def clevr_dist(ex: Mapping) -> int:
    """Depth of the closest object, ``min(pixel_coords[:, 2])``, binned by [0, 8, 8.5, 9, 9.5, 10, 100]."""
    z = np.asarray(ex["objects"]["pixel_coords"], dtype=np.float64).reshape(-1, 3)[:, 2]
    return largest_below(CLEVR_DIST_THRESHOLDS, float(z.min()))


@rule("kitti_dist", feature="objects", num_classes=4)
def kitti_dist(ex: Mapping) -> int:
    """Closest vehicle (type < 3: Car, Van, Truck) by ``location_z``, binned by [-100, 8, 20, 999];
    no vehicle counts as 1000 m (class 3)."""
    obj = ex["objects"]
    types = np.asarray(obj["type"]).reshape(-1)
    z = np.asarray(obj["location"], dtype=np.float64).reshape(-1, 3)[:, 2]
    d = min([KITTI_NO_VEHICLE, *z[types < 3].tolist()])
    return largest_below(KITTI_DIST_THRESHOLDS, d)


@rule("dsprites_loc", feature="label_x_position", num_classes=16)
def dsprites_loc(ex: Mapping) -> int:
    """``floor(label_x_position / 2)``: 32 positions -> 16 bins."""
    return int(np.floor(int(ex["label_x_position"]) / 2))


@rule("dsprites_ori", feature="label_orientation", num_classes=16)
def dsprites_ori(ex: Mapping) -> int:
    """``floor(label_orientation / 2.5)``: 40 orientations -> 16 bins."""
    return int(np.floor(int(ex["label_orientation"]) / 2.5))
