"""Every label rule on hand-made examples, boundary values included (docs/vtab1k.md, "Derived labels")."""

from __future__ import annotations

import numpy as np
import pytest

from pvera_bench.data.labels import RULES, get_rule, largest_below


def clevr(zs):
    n = len(zs)
    return {"objects": {"size": np.zeros(n, np.int64),
                        "pixel_coords": np.array([[10.0, 20.0, z] for z in zs], np.float32).reshape(n, 3)}}


def kitti(objs):
    """objs: [(type, z), ...]"""
    return {"objects": {"type": np.array([t for t, _ in objs], np.int64),
                        "location": np.array([[1.0, 2.0, z] for _, z in objs], np.float32).reshape(len(objs), 3)}}


def test_registry_has_the_rules_the_configs_use():
    assert set(RULES) >= {"label", "label_azimuth", "label_elevation", "clevr_count", "clevr_dist", "kitti_dist",
                          "dsprites_loc", "dsprites_ori"}
    with pytest.raises(KeyError, match="unknown label rule"):
        get_rule("nope")


def test_plain_label_rules():
    ex = {"label": np.int64(7), "label_azimuth": 17, "label_elevation": 8}
    assert get_rule("label")(ex) == 7
    assert get_rule("label_azimuth")(ex) == 17
    assert get_rule("label_elevation")(ex) == 8


@pytest.mark.parametrize("n,expected", [(3, 0), (4, 1), (9, 6), (10, 7)])
def test_clevr_count(n, expected):
    assert get_rule("clevr_count")(clevr([9.0] * n)) == expected


def test_clevr_count_accepts_lists_as_tfds_decodes_sequences():
    ex = {"objects": {"size": [np.int64(0)] * 5, "pixel_coords": [np.zeros(3, np.float32)] * 5}}
    assert get_rule("clevr_count")(ex) == 2


@pytest.mark.parametrize("d,expected", [
    (0.5, 0), (7.99, 0), (8.0, 0),          # (0, 8] -> 0: 8.0 exactly is NOT above the 8 threshold
    (8.01, 1), (8.5, 1),                     # (8, 8.5] -> 1
    (8.51, 2), (9.0, 2), (9.25, 3), (9.5, 3),
    (9.75, 4), (10.0, 4), (10.01, 5), (15.0, 5), (99.0, 5),
])
def test_clevr_dist_thresholds(d, expected):
    assert get_rule("clevr_dist")(clevr([d, d + 1.0, d + 3.0])) == expected


def test_clevr_dist_uses_the_closest_object():
    assert get_rule("clevr_dist")(clevr([12.0, 8.2, 9.7])) == 1


@pytest.mark.parametrize("objs,expected", [
    ([], 3),                                  # no object at all: "no vehicle" -> 1000 m -> 3
    ([(3, 5.0), (4, 2.0), (7, 1.0)], 3),      # pedestrians, cyclists, misc do not count
    ([(0, 8.0)], 0),                          # z exactly 8 -> 0 (<= 8 m)
    ([(0, 7.0)], 0), ([(0, -5.0)], 0),
    ([(1, 8.01)], 1), ([(2, 20.0)], 1),       # (8, 20] -> 1
    ([(0, 20.01)], 2), ([(0, 999.0)], 2),     # (20, 999] -> 2
    ([(0, 999.5)], 3), ([(0, 1000.0)], 3),
    ([(0, 30.0), (2, 15.0), (3, 1.0)], 1),    # closest vehicle (Truck at 15 m); the nearer pedestrian ignored
])
def test_kitti_dist(objs, expected):
    assert get_rule("kitti_dist")(kitti(objs)) == expected


@pytest.mark.parametrize("x,expected", [(0, 0), (1, 0), (2, 1), (3, 1), (30, 15), (31, 15)])
def test_dsprites_loc(x, expected):
    assert get_rule("dsprites_loc")({"label_x_position": np.int64(x)}) == expected


@pytest.mark.parametrize("o,expected", [(0, 0), (2, 0), (3, 1), (4, 1), (5, 2), (37, 14), (38, 15), (39, 15)])
def test_dsprites_ori(o, expected):
    assert get_rule("dsprites_ori")({"label_orientation": np.int64(o)}) == expected


def test_dsprites_bins_are_balanced():
    loc = [get_rule("dsprites_loc")({"label_x_position": x}) for x in range(32)]
    ori = [get_rule("dsprites_ori")({"label_orientation": o}) for o in range(40)]
    assert np.bincount(loc).tolist() == [2] * 16
    assert sorted(set(ori)) == list(range(16)) and np.bincount(ori).tolist() == [3, 2, 3, 2] * 4


def test_largest_below():
    assert largest_below([0, 8, 20], -1) == -1
    assert largest_below([0, 8, 20], 0) == -1
    assert largest_below([0, 8, 20], 0.1) == 0
    assert largest_below([0, 8, 20], 8) == 0
    assert largest_below([0, 8, 20], 21) == 2
