"""--ranks / --plot-ranks with the same adapters on several backbones: ranked per backbone (issue 24)."""

import io

import pandas as pd

from test_report import main_out, run, write_csv  # noqa: F401

PNG = b"\x89PNG\r\n\x1a\n"
TASKS = ["caltech101", "cifar100", "dtd"]


def rows_two_backbones():
    """a beats b on vit_b16 on every task; b beats a on vit_l16 on every task."""
    rows = []
    for i, t in enumerate(TASKS):
        rows += [run("a", t, 0, 90.0 - i, backbone="vit_b16"), run("b", t, 0, 80.0 - i, backbone="vit_b16"),
                 run("a", t, 0, 60.0 - i, backbone="vit_l16"), run("b", t, 0, 70.0 - i, backbone="vit_l16")]
    return rows


def test_ranks_are_per_backbone(capsys, tmp_path):
    path = write_csv(tmp_path / "r.csv", rows_two_backbones())
    rc, out, err = main_out(capsys, ["--results", str(path), "--ranks", "--format", "csv"])
    assert rc == 0, err
    df = pd.read_csv(io.StringIO(out))
    assert list(df.columns[:2]) == ["backbone", "label"]
    got = {(r.backbone, r.label): r.average_rank for r in df.itertuples()}
    assert got == {("vit_b16", "a"): 1.0, ("vit_b16", "b"): 2.0, ("vit_l16", "b"): 1.0, ("vit_l16", "a"): 2.0}
    rc, md, err = main_out(capsys, ["--results", str(path), "--ranks"])
    assert rc == 0, err
    assert "**backbone vit_b16**" in md and "**backbone vit_l16**" in md
    assert md.count("Ranks over the 3 blocks") == 2


def test_plot_ranks_draws_one_panel_per_backbone(capsys, tmp_path):
    # a critical-difference diagram needs 3 rows: c is last on both backbones
    third = [run("c", t, 0, 50.0 - i, backbone=bb) for i, t in enumerate(TASKS) for bb in ("vit_b16", "vit_l16")]
    path = write_csv(tmp_path / "r.csv", rows_two_backbones() + third)
    png = tmp_path / "cd.png"
    rc, _, err = main_out(capsys, ["--results", str(path), "--plot-ranks", str(png)])
    assert rc == 0, err
    assert png.read_bytes()[:8] == PNG


def test_one_adapter_per_backbone_is_one_line(capsys, tmp_path):
    rows = [run("a", t, 0, 90.0 - i, backbone=bb) for i, t in enumerate(TASKS) for bb in ("vit_b16", "vit_l16")]
    path = write_csv(tmp_path / "r.csv", rows)
    for argv in (["--ranks"], ["--plot-ranks", str(tmp_path / "x.png")]):
        rc, _, err = main_out(capsys, ["--results", str(path), *argv])
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert "ranked apart" in err and "--backbone" in err
    assert not (tmp_path / "x.png").exists()
