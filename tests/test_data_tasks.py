"""The 19 task configs against the VTAB-1k table (hard-coded here, and parsed from
../shared/docs/vtab1k.md when that file exists)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pvera_bench.data.labels import RULES

REPO = Path(__file__).resolve().parents[1]
TASK_DIR = REPO / "configs" / "task"
DOC = REPO.parent / "shared" / "docs" / "vtab1k.md"

# task, group, TFDS spec (as VTAB-1k defines it), val200, test, test size, classes, label rule, folder
TABLE = [
    ("caltech101", "natural", "caltech101:3.*.*", "train[2754:2954]", "test", 6084, 102, "label", "caltech101"),
    ("cifar100", "natural", "cifar100:3.*.*", "train[45000:45200]", "test", 10000, 100, "label", "cifar"),
    ("dtd", "natural", "dtd:3.*.*", "validation[:200]", "test", 1880, 47, "label", "dtd"),
    ("oxford_flowers102", "natural", "oxford_flowers102:2.*.*", "validation[:200]", "test", 6149, 102, "label",
     "oxford_flowers102"),
    ("oxford_iiit_pet", "natural", "oxford_iiit_pet:3.*.*", "train[2944:3144]", "test", 3669, 37, "label",
     "oxford_iiit_pet"),
    ("svhn", "natural", "svhn_cropped:3.*.*", "train[65931:66131]", "test", 26032, 10, "label", "svhn"),
    ("sun397", "natural", "sun397/tfds:4.*.*", "validation[:200]", "test", 21750, 397, "label", "sun397"),
    ("patch_camelyon", "specialized", "patch_camelyon:2.*.*", "validation[:200]", "test", 32768, 2, "label",
     "patch_camelyon"),
    ("eurosat", "specialized", "eurosat/rgb:2.*.*", "train[16200:16400]", "train[21600:]", 5400, 10, "label",
     "eurosat"),
    ("resisc45", "specialized", "resisc45:3.*.*", "train[18900:19100]", "train[25200:]", 6300, 45, "label",
     "resisc45"),
    ("diabetic_retinopathy", "specialized", "diabetic_retinopathy_detection/btgraham-300:3.*.*", "validation[:200]",
     "test", 42670, 5, "label", "diabetic_retinopathy"),
    ("clevr_count", "structured", "clevr:3.*.*", "train[63000:63200]", "validation", 15000, 8, "clevr_count",
     "clevr_count"),
    ("clevr_dist", "structured", "clevr:3.*.*", "train[63000:63200]", "validation", 15000, 6, "clevr_dist",
     "clevr_dist"),
    ("dmlab", "structured", "dmlab:2.0.1", "validation[:200]", "test", 22735, 6, "label", "dmlab"),
    ("kitti", "structured", "kitti:3.1.0", "validation[:200]", "test", 711, 4, "kitti_dist", "kitti"),
    ("dsprites_loc", "structured", "dsprites:2.*.*", "train[589824:590024]", "train[663552:]", 73728, 16,
     "dsprites_loc", "dsprites_loc"),
    ("dsprites_ori", "structured", "dsprites:2.*.*", "train[589824:590024]", "train[663552:]", 73728, 16,
     "dsprites_ori", "dsprites_ori"),
    ("smallnorb_azi", "structured", "smallnorb:2.*.*", "test[:200]", "test[50%:]", 12150, 18, "label_azimuth",
     "smallnorb_azi"),
    ("smallnorb_ele", "structured", "smallnorb:2.*.*", "test[:200]", "test[50%:]", 12150, 9, "label_elevation",
     "smallnorb_ele"),
]
BETA = {"caltech101": 1e16, "dmlab": 1e16, "dtd": 1e16, "kitti": 1e12, "oxford_iiit_pet": 1e12, "sun397": 1e12,
        "dsprites_ori": 1e10, "clevr_dist": 1e8, "dsprites_loc": 1e8, "oxford_flowers102": 1e8, "svhn": 1e8}
# the doc's label column (words) -> our rule names
DOC_LABEL = {"label": "label", "count": "clevr_count", "closest distance": "clevr_dist",
             "closest vehicle": "kitti_dist", "x position": "dsprites_loc", "orientation": "dsprites_ori",
             "label_azimuth": "label_azimuth", "label_elevation": "label_elevation"}


def load(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(TASK_DIR / f"{name}.yaml"), resolve=True)


def vtab_spec(cfg: dict) -> str:
    return cfg["tfds"].get("vtab_spec") or cfg["tfds"]["name"]


def test_nineteen_task_files_and_nothing_else():
    names = sorted(p.stem for p in TASK_DIR.glob("*.yaml") if p.stem != "demo")
    assert names == sorted(row[0] for row in TABLE)


@pytest.mark.parametrize("order,row", list(enumerate(TABLE)), ids=[r[0] for r in TABLE])
def test_task_config_matches_table(order, row):
    name, group, spec, val200, test, test_n, classes, label, folder = row
    cfg = load(name)
    assert cfg["name"] == name and cfg["group"] == group and cfg["order"] == order
    assert cfg["num_classes"] == classes and cfg["folder"] == folder and cfg["label"] == label
    assert vtab_spec(cfg) == spec
    assert cfg["tfds"]["splits"] == {"train800": "train[:800]", "val200": val200,
                                     "train800val200": f"train[:800]+{val200}", "test": test}
    assert cfg["sizes"] == {"train800": 800, "val200": 200, "train800val200": 1000, "test": test_n}
    assert isinstance(cfg["pvera_beta"], float) and cfg["pvera_beta"] == BETA.get(name, 1e6)
    rule = RULES[label]
    assert rule.num_classes in (None, classes)


def test_oxford_iiit_pet_reads_the_version_tfds_builds_and_says_so():
    cfg = load("oxford_iiit_pet")
    assert cfg["tfds"]["name"].startswith("oxford_iiit_pet:4.")
    assert "unconfirmed" in cfg["tfds"]["note"]


def test_kitti_reads_the_version_tfds_builds_and_says_so():
    """TFDS 4.9 builds only kitti 3.3.0 (3.1.0, VTAB-1k's, is "too old ... cannot be generated")."""
    cfg = load("kitti")
    assert cfg["tfds"]["name"] == "kitti:3.3.0" and cfg["tfds"]["vtab_spec"] == "kitti:3.1.0"
    assert "confirmed" in cfg["tfds"]["note"] and "3.3.0" in cfg["tfds"]["note"]


def test_task_order_and_groups_via_tasks_module():
    from pvera_bench import tasks

    assert tasks.vtab_tasks() == [r[0] for r in TABLE]
    for g in ("natural", "specialized", "structured"):
        assert tasks.tasks_in_group(g) == [r[0] for r in TABLE if r[1] == g]
    assert [len(tasks.tasks_in_group(g)) for g in tasks.GROUPS] == [7, 4, 8]


def test_readme_documents_sweep_words():
    text = (TASK_DIR / "README.md").read_text()
    for word in ("task=vtab", "task=natural", "task=specialized", "task=structured"):
        assert word in text


def parse_doc_table(text: str) -> list[dict]:
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 8 or cells[0] in ("task (`task=`)",) or set(cells[0]) <= {"-"}:
            continue
        task, group, spec, train, val, test, classes, label = cells
        m = re.match(r"`(.+?)`\s*\((\d+)\)", test)
        rows.append({"task": task, "group": group, "spec": re.search(r"`(.+?)`", spec).group(1),
                     "train800": train.strip("`"), "val200": val.strip("`"), "test": m.group(1),
                     "test_n": int(m.group(2)), "classes": int(classes), "label": DOC_LABEL[label.strip("`")]})
    return rows


@pytest.mark.skipif(not DOC.is_file(), reason="../shared/docs/vtab1k.md not present")
def test_configs_match_the_markdown_table():
    text = DOC.read_text()
    rows = parse_doc_table(text)
    assert [r["task"] for r in rows] == [r[0] for r in TABLE]
    for order, r in enumerate(rows):
        cfg = load(r["task"])
        assert cfg["order"] == order and cfg["group"] == r["group"]
        assert vtab_spec(cfg) == r["spec"]
        assert cfg["tfds"]["splits"]["train800"] == r["train800"]
        assert cfg["tfds"]["splits"]["val200"] == r["val200"]
        assert cfg["tfds"]["splits"]["test"] == r["test"]
        assert cfg["sizes"]["test"] == r["test_n"] and cfg["num_classes"] == r["classes"]
        assert cfg["label"] == r["label"]
    # the folder names line of the doc
    m = re.search(r"Folder names: `([^`]+)`", text.replace("\n", " "))
    assert m and m.group(1).split() == [row[8] for row in TABLE]
