"""`pvera-bench data prepare` against the REAL TFDS builders (cifar100, svhn_cropped, dsprites, smallnorb,
clevr, kitti, eurosat and the manual-download resisc45), fed tiny raw files in each builder's upstream
layout (tests/tfds_raw.py), then read back through the project's reader with split strings that fit
the tiny splits; labels are checked against the raw values the test wrote.

Needs the `prepare` extra (TensorFlow and what the builders import): skipped without TensorFlow, and
failing, not skipped, when PVERA_BENCH_REQUIRE_PREPARE=1 (CI's second virtual environment).
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tfds_raw
from pvera_bench.data import load_split
from pvera_bench.data.tfds_source import tensorflow_available

if not tensorflow_available():
    if os.environ.get("PVERA_BENCH_REQUIRE_PREPARE") == "1":
        raise RuntimeError("PVERA_BENCH_REQUIRE_PREPARE=1 but TensorFlow is not importable")
    pytest.skip('needs TensorFlow (the prepare extra: pip install -e ".[prepare,test]")', allow_module_level=True)

HERE = Path(__file__).resolve().parent
TASKS = ["cifar100", "svhn", "dsprites_loc", "dsprites_ori", "smallnorb_azi", "smallnorb_ele", "clevr_count",
         "clevr_dist", "kitti", "eurosat", "resisc45"]


def env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
                TQDM_DISABLE="1", HF_HUB_OFFLINE="1")


def run(*args, timeout=900, prefix=()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env=env())


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """One `data prepare` of all eight builders, redirected to the tiny raw files in manual_dir."""
    d = tmp_path_factory.mktemp("tfds-real")
    manual = d / "downloads" / "manual"
    manual.mkdir(parents=True)
    expected = {name: w(manual) for name, w in tfds_raw.WRITERS.items()}
    t0 = time.monotonic()
    r = run(str(HERE / "tfds_raw.py"), "prepare", f"task={','.join(TASKS)}", f"data.dir={d}")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    return str(d), expected, out, time.monotonic() - t0


def table_task(name: str, splits: dict[str, str]) -> dict:
    from pvera_bench.tasks import task_configs

    task = copy.deepcopy(dict(task_configs()[name]))
    task["tfds"] = {**task["tfds"], "splits": splits}
    task.pop("sizes", None)
    return task


def read(d: str, task: dict, split: str, size: int = 8):
    return load_split(task, split, source="tfds", data_dir=d, img_size=size, cache_dir=None)


def splits4(train: str, val: str, test: str) -> dict[str, str]:
    return {"train800": train, "val200": val, "train800val200": f"{train}+{val}", "test": test}


def check_indexed(d, task, expected, want_sizes, label_of=lambda v: v, grey=False):
    """Every split: the size its split string gives, each example's label = the rule applied to the raw
    value written for the example its image names, and train800val200 = train800 + val200.
    ``grey``: the images name their index only (unique across the raw splits), not their split."""
    got = {}
    for split, n in want_sizes.items():
        s = read(d, task, split)
        idx, names = tfds_raw.decode(s.images)
        if grey:
            expected = {"all": {k: v for part in expected.values() for k, v in part.items()}}
            names = ["all"] * len(idx)
        assert len(s) == n, (split, len(s))
        assert s.labels.tolist() == [label_of(expected[sp][i]) for i, sp in zip(idx, names)], split
        got[split] = list(zip(names, idx))
    assert sorted(got["train800val200"]) == sorted(got["train800"] + got["val200"])
    assert not set(got["train800"]) & set(got["val200"])
    return got


def test_output_is_quiet_progress_and_results(prepared):
    d, _, out, seconds = prepared
    assert "has no dataset_info.json" not in out and "Traceback" not in out
    for spec in ("cifar100:3.*.*", "svhn_cropped:3.*.*", "dsprites:2.*.*", "smallnorb:2.*.*", "clevr:3.*.*",
                 "kitti:3.3.0", "eurosat/rgb:2.*.*", "resisc45:3.*.*"):
        assert f"{spec} ready at" in out
    assert "all 11 task(s) ready" in out
    print(f"prepared 8 builders in {seconds:.1f} s")


def test_cifar100(prepared):
    d, exp, *_ = prepared
    task = table_task("cifar100", splits4("train[:4]", "train[4:6]", "test"))
    got = check_indexed(d, task, exp["cifar100"], {"train800": 4, "val200": 2, "train800val200": 6, "test": 4})
    assert sorted(got["train800val200"]) == [("train", i) for i in range(6)]


def test_svhn_ten_is_zero(prepared):
    d, exp, *_ = prepared
    task = table_task("svhn", splits4("train[:3]", "train[3:5]", "test"))
    check_indexed(d, task, exp["svhn_cropped"], {"train800": 3, "val200": 2, "train800val200": 5, "test": 4})
    assert 10 % 10 in exp["svhn_cropped"]["train"].values()  # the raw y=10 is there, read as 0


@pytest.mark.parametrize("name,col,rule", [("dsprites_loc", 0, lambda v: v // 2),
                                           ("dsprites_ori", 1, lambda v: int(np.floor(v / 2.5)))])
def test_dsprites(prepared, name, col, rule):
    d, exp, *_ = prepared
    raw = exp["dsprites"]["train"]
    task = table_task(name, splits4("train[:4]", "train[4:6]", "train[6:]"))
    seen = []
    for split, n in (("train800", 4), ("val200", 2), ("test", 2)):
        s = read(d, task, split, size=64)  # the images' own size: pixels untouched by resizing
        assert len(s) == n and set(np.unique(s.images)) == {0, 255}  # 0/1 pixels scaled to 0/255
        idx = tfds_raw.dsprites_decode(s.images)
        assert s.labels.tolist() == [rule(raw[i][col]) for i in idx]
        seen += idx
    assert sorted(seen) == sorted(raw)


@pytest.mark.parametrize("name,col", [("smallnorb_azi", 0), ("smallnorb_ele", 1)])
def test_smallnorb(prepared, name, col):
    d, exp, *_ = prepared
    task = table_task(name, splits4("train[:2]", "test[:2]", "test[50%:]"))
    check_indexed(d, task, exp["smallnorb"], {"train800": 2, "val200": 2, "train800val200": 4, "test": 3},
                  label_of=lambda v: v[col], grey=True)


@pytest.mark.parametrize("name", ["clevr_count", "clevr_dist"])
def test_clevr(prepared, name):
    d, exp, *_ = prepared
    thresholds = [0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0]  # vtab1k.md: largest i with threshold[i] < d

    def label(v):
        n, z = v
        return n - 3 if name == "clevr_count" else max(i for i, t in enumerate(thresholds) if t < z)

    task = table_task(name, splits4("train[:4]", "train[4:6]", "validation"))
    check_indexed(d, task, exp["clevr"], {"train800": 4, "val200": 2, "train800val200": 6, "test": 3},
                  label_of=label)


def kitti_label(z):
    """vtab1k.md: vehicles only, no vehicle = 1000 m, thresholds [-100, 8, 20, 999]."""
    z = 1000.0 if z is None else z
    return max(i for i, t in enumerate([-100.0, 8.0, 20.0, 999.0]) if t < z)


def test_kitti_3_3_0_splits_by_video(prepared):
    d, exp, *_ = prepared
    raw = exp["kitti"]["all"]
    task = table_task("kitti", splits4("train[:3]", "validation[:2]", "test"))
    assert task["tfds"]["name"] == "kitti:3.3.0"
    videos = {}
    for split, n in (("train800", 3), ("val200", 2), ("test", 2)):
        s = read(d, task, split)
        idx, _ = tfds_raw.decode(s.images)
        assert len(s) == n
        assert s.labels.tolist() == [kitti_label(raw[i][1]) for i in idx]
        videos[split] = {raw[i][0] for i in idx}
    # 4 videos: 10% (at least 1) to test, as many to validation, the rest (2 videos, 4 images) to train
    assert len(videos["test"]) == 1 and len(videos["val200"]) == 1
    assert not (videos["test"] & videos["val200"]) and not (videos["train800"] & (videos["test"] | videos["val200"]))
    assert sorted({kitti_label(z) for _, z in raw.values()}) == [0, 1, 2, 3]


def test_kitti_data_check_reports_the_tiny_sizes(prepared):
    d, *_ = prepared
    r = run("-m", "pvera_bench.cli", "data", "check", "task=kitti", f"data.dir={d}", timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out  # the tiny splits do not fit the table's split strings and sizes
    assert "cannot read split 'train[:800]' of kitti:3.3.0" in out, out
    assert "(prepared splits: train 4, validation 2, test 2)" in out, out
    assert "test: 2 examples, the task table says 711" in out, out
    assert "found: test 2, 4 classes (2 seen in the data)" in out, out
    print(out)


def test_eurosat(prepared):
    d, exp, *_ = prepared
    task = table_task("eurosat", splits4("train[:4]", "train[4:6]", "train[6:]"))
    check_indexed(d, task, exp["eurosat"], {"train800": 4, "val200": 2, "train800val200": 6, "test": 4})


def test_resisc45_manual_download(prepared):
    d, exp, *_ = prepared
    task = table_task("resisc45", splits4("train[:3]", "train[3:4]", "train[4:]"))
    check_indexed(d, task, exp["resisc45"], {"train800": 3, "val200": 1, "train800val200": 4, "test": 2})


def test_prepared_again_builds_nothing(prepared):
    d, *_ = prepared
    r = run("-m", "pvera_bench.cli", "data", "prepare", "task=kitti,cifar100", f"data.dir={d}", timeout=300)
    assert r.returncode == 0 and r.stdout.count("already prepared") == 2, r.stdout + r.stderr


# ---------------------------------------------------------------- no network
def _unshare() -> list[str]:
    exe = shutil.which("unshare")
    if exe and subprocess.run([exe, "-rn", "true"], capture_output=True).returncode == 0:
        return [exe, "-rn"]
    return []


@pytest.mark.skipif(not _unshare(), reason="needs `unshare -rn` (a network namespace without network)")
def test_offline_prepare_says_what_to_fetch_and_where(tmp_path):
    t0 = time.monotonic()
    r = run("-m", "pvera_bench.cli", "data", "prepare", "task=cifar100,resisc45", f"data.dir={tmp_path}",
            prefix=_unshare(), timeout=120)
    seconds = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert seconds < 30, seconds
    manual = tmp_path / "downloads" / "manual"
    assert "[cifar100] cannot reach www.cs.toronto.edu" in out
    assert f"https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz (160.7 MiB)\n      -> " \
           f"{manual}/cifar-100-binary.tar.gz" in out
    assert "[resisc45] resisc45:3.*.* needs a manual download" in out and "1drv.ms" in out  # TFDS's instructions
    assert "nothing built; cifar100, resisc45 cannot start" in out
    assert "Traceback" not in out and "dataset_info.json" not in out
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp" in p.name or p.suffix == ".incomplete"]
    assert leftovers == [] and not (tmp_path / "cifar100").exists()
    print(f"offline prepare: exit {r.returncode} in {seconds:.1f} s\n{out}")
