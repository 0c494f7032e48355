import io
import math

import numpy as np
import pandas as pd
import pytest

from pvera_bench import report, tasks

VTAB = {
    "natural": ["caltech101", "cifar100", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"],
    "specialized": ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"],
    "structured": ["clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
                   "smallnorb_azi", "smallnorb_ele"],
}
VTAB_ORDER = [t for g in tasks.GROUPS for t in VTAB[g]]


@pytest.fixture(autouse=True)
def task_table(monkeypatch):
    """A fixed task table (the 19 VTAB-1k tasks + demo), independent of configs/task/."""
    table = {t: {"name": t, "group": g, "order": VTAB_ORDER.index(t)} for g, ts in VTAB.items() for t in ts}
    table["demo"] = {"name": "demo", "num_classes": 10}
    monkeypatch.setattr(tasks, "task_configs", lambda: table)
    return table


def run(adapter, task, seed, acc, params=1000, status="ok", backbone="vit_b16", protocol="vtab", **extra):
    return dict(task=task, adapter=adapter, backbone=backbone, protocol=protocol, seed=seed,
                test_acc=acc, params_adapter=params, status=status, **extra)


def write_csv(path, rows, columns=None):
    df = pd.DataFrame(rows)
    if columns is not None:
        df = df[columns]
    df.to_csv(path, index=False)
    return path


def main_out(capsys, argv):
    rc = report.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def csv_table(capsys, argv):
    rc, out, err = main_out(capsys, argv + ["--format", "csv"])
    assert rc == 0, err
    return pd.read_csv(io.StringIO(out)), out, err


PVERA_RUNS = [
    run("pvera", "caltech101", 0, 70.0),
    run("pvera", "caltech101", 1, 72.0),
    run("pvera", "cifar100", 0, 60.0),
    run("pvera", "patch_camelyon", 0, 80.0),
    run("pvera", "clevr_count", 0, 50.0),
    run("pvera", "dsprites_loc", 0, 40.0),
    run("pvera", "demo", 0, 99.0),
]
LINEAR_RUNS = [run("linear", t, 0, 50.0 + i, params=0) for i, t in enumerate(VTAB_ORDER)]


@pytest.fixture
def results(tmp_path):
    return write_csv(tmp_path / "results.csv", PVERA_RUNS + LINEAR_RUNS)


def test_csv_means_std_groups_and_averages(capsys, results):
    df, out, _ = csv_table(capsys, ["--results", str(results)])
    assert list(df.columns) == report.csv_columns(VTAB_ORDER, ["demo"])
    assert list(df.columns[:8]) == ["adapter", "backbone", "protocol", "recipe", "label", "setting",
                                    "adapter_options", "code_versions"]
    assert list(df.columns[8:11]) == ["caltech101", "caltech101_std", "caltech101_n_seeds"]
    assert list(df.columns[-5:]) == ["mean", "mean_n_tasks", "mean_of_groups", "mean_of_groups_n_groups",
                                     "params_adapter"]
    assert df["adapter"].tolist() == ["linear", "pvera"]  # sorted
    p = df.set_index("adapter").loc["pvera"]
    assert p["caltech101"] == pytest.approx(71.0)
    assert p["caltech101_std"] == pytest.approx(math.sqrt(2))  # sample std (ddof=1) of 70, 72
    assert p["caltech101_n_seeds"] == 2
    assert math.isnan(p["cifar100_std"])  # one seed: no std
    assert p["natural"] == pytest.approx(65.5) and p["natural_n_tasks"] == 2
    assert p["specialized"] == pytest.approx(80.0) and p["specialized_n_tasks"] == 1
    assert p["structured"] == pytest.approx(45.0) and p["structured_n_tasks"] == 2
    assert p["mean"] == pytest.approx((71 + 60 + 80 + 50 + 40) / 5) and p["mean_n_tasks"] == 5
    assert p["mean_of_groups"] == pytest.approx((65.5 + 80 + 45) / 3) and p["mean_of_groups_n_groups"] == 3
    assert p["demo"] == pytest.approx(99.0)  # its own column, not in any average
    assert p["params_adapter"] == 1000

    lin = df.set_index("adapter").loc["linear"]
    assert lin["mean"] == pytest.approx(np.mean(50.0 + np.arange(19))) and lin["mean_n_tasks"] == 19
    assert lin["natural"] == pytest.approx(np.mean(50.0 + np.arange(7)))
    assert lin["structured"] == pytest.approx(np.mean(50.0 + np.arange(11, 19)))
    groups = [np.mean(50.0 + np.arange(7)), np.mean(50.0 + np.arange(7, 11)), np.mean(50.0 + np.arange(11, 19))]
    assert lin["mean_of_groups"] == pytest.approx(np.mean(groups))
    assert math.isnan(lin["demo"]) and lin["demo_n_seeds"] == 0
    assert lin["params_adapter"] == 0


def test_empty_task_stays_empty(capsys, results):
    df, out, _ = csv_table(capsys, ["--results", str(results)])
    p = df.set_index("adapter").loc["pvera"]
    assert math.isnan(p["dtd"]) and p["dtd_n_seeds"] == 0
    # the raw csv cell is empty, not 0
    header = out.splitlines()[0].split(",")
    pvera_line = next(l for l in out.splitlines() if l.startswith("pvera,"))
    assert pvera_line.split(",")[header.index("dtd")] == ""

    rc, md, _ = main_out(capsys, ["--results", str(results)])
    assert rc == 0
    lines = md.splitlines()
    cols = [c.strip() for c in lines[0].strip("|").split("|")]
    row = [c.strip() for c in next(l for l in lines if l.startswith("| pvera")).strip("|").split("|")]
    assert row[cols.index("dtd")] == ""
    assert row[cols.index("caltech101")] == "71.0 ± 1.4"
    assert row[cols.index("cifar100")] == "60.0"
    assert row[cols.index("natural")] == "65.5 (2/7)"
    assert row[cols.index("mean")] == "60.2 (5/19)"
    assert row[cols.index("mean_of_groups")] == "63.5 (5/19)"
    assert row[cols.index("demo")] == "99.0"
    assert row[cols.index("params_adapter")] == "1,000"
    assert cols.index("demo") == cols.index("smallnorb_ele") + 1
    assert "backbone" not in cols and "protocol" not in cols  # a single backbone / protocol
    lin = [c.strip() for c in next(l for l in lines if l.startswith("| linear")).strip("|").split("|")]
    assert lin[cols.index("mean")] == "59.0"  # complete: no count
    assert "mean over the 19 VTAB-1k tasks" in md and "mean of the three group means" in md


def test_failed_rows_excluded_and_counted(capsys, tmp_path):
    rows = PVERA_RUNS + [
        run("pvera", "caltech101", 2, 0.0, status="failed"),
        run("pvera", "dtd", 0, float("nan"), status="failed"),
    ]
    path = write_csv(tmp_path / "r.csv", rows)
    df, _, err = csv_table(capsys, ["--results", str(path)])
    assert "excluded 2 failed runs" in err
    p = df.set_index("adapter").loc["pvera"]
    assert p["caltech101"] == pytest.approx(71.0) and p["caltech101_n_seeds"] == 2
    assert "dtd" not in df.columns  # only failed runs: no results, no column


def test_missing_column_is_one_error(capsys, tmp_path):
    path = write_csv(tmp_path / "r.csv", PVERA_RUNS, columns=["task", "adapter", "backbone", "protocol", "seed",
                                                               "test_acc", "status"])
    rc, out, err = main_out(capsys, ["--results", str(path)])
    assert rc == 2
    assert "missing column params_adapter" in err
    assert "Traceback" not in err and err.count("error") == 1 and out == ""


def test_malformed_line_is_one_error(capsys, tmp_path):
    path = write_csv(tmp_path / "r.csv", PVERA_RUNS)
    with open(path, "a") as f:
        f.write("dtd,pvera,vit_b16,vtab,0,55.0,1000,ok,unexpected,extra\n")
    rc, _, err = main_out(capsys, ["--results", str(path)])
    assert rc == 2 and "malformed CSV" in err and "Traceback" not in err


def test_non_numeric_metric_is_one_error(capsys, tmp_path):
    rows = PVERA_RUNS + [run("pvera", "dtd", 0, "abc")]
    path = write_csv(tmp_path / "r.csv", rows)
    rc, _, err = main_out(capsys, ["--results", str(path)])
    assert rc == 2
    assert f"line {len(rows) + 1}: column test_acc is not a number: 'abc'" in err


def test_exit_code_on_error_without_subprocess(tmp_path):
    assert report.main(["--results", str(tmp_path / "nope.csv")]) == 2


def test_extra_columns_any_order_and_duplicates(capsys, tmp_path):
    rows = [dict(r, lr=0.001, run_dir="x") for r in PVERA_RUNS]
    cols = ["lr", "status", "test_acc", "seed", "run_dir", "params_adapter", "task", "protocol", "backbone", "adapter"]
    path = write_csv(tmp_path / "r.csv", rows + [dict(run("pvera", "cifar100", 0, 64.0), lr=0.1, run_dir="y")], cols)
    df, _, err = csv_table(capsys, ["--results", str(path)])
    p = df.set_index("adapter").loc["pvera"]
    assert p["caltech101"] == pytest.approx(71.0)
    assert p["cifar100"] == pytest.approx(64.0) and p["cifar100_n_seeds"] == 1  # the last line wins
    assert "repeated" in err


def test_metric_ece_uses_test_ece(capsys, tmp_path):
    rows = [dict(r, test_ece=0.01 * (i + 1)) for i, r in enumerate(PVERA_RUNS)]
    path = write_csv(tmp_path / "r.csv", rows)
    df, _, _ = csv_table(capsys, ["--results", str(path), "--metric", "ece"])
    p = df.set_index("adapter").loc["pvera"]
    assert p["caltech101"] == pytest.approx(0.015)  # 0.01 and 0.02
    assert p["cifar100"] == pytest.approx(0.03)
    rc, md, _ = main_out(capsys, ["--results", str(path), "--metric", "ece"])
    assert rc == 0 and "0.015 ± 0.007" in md and "test_ece" in md
    # without the column: one error naming it
    path2 = write_csv(tmp_path / "r2.csv", PVERA_RUNS)
    rc, _, err = main_out(capsys, ["--results", str(path2), "--metric", "ece"])
    assert rc == 2 and "test_ece" in err


def test_filters_and_several_backbones(capsys, tmp_path):
    rows = PVERA_RUNS + [run("pvera", "caltech101", 0, 80.0, backbone="dinov2_b14"), run("lora", "dtd", 0, 66.0)]
    path = write_csv(tmp_path / "r.csv", rows)
    df, _, _ = csv_table(capsys, ["--results", str(path)])
    assert df[["adapter", "backbone"]].values.tolist() == [["lora", "vit_b16"], ["pvera", "dinov2_b14"],
                                                           ["pvera", "vit_b16"]]
    rc, md, _ = main_out(capsys, ["--results", str(path)])
    assert md.splitlines()[0].startswith("| adapter | backbone | caltech101")
    df, _, _ = csv_table(capsys, ["--results", str(path), "--adapter", "pvera", "--backbone", "vit_b16,x"])
    assert df["adapter"].tolist() == ["pvera"] and df["backbone"].tolist() == ["vit_b16"]
    df, _, _ = csv_table(capsys, ["--results", str(path), "--seed", "1"])
    assert df["caltech101_n_seeds"].tolist() == [1] and df["caltech101"].tolist() == [72.0]


def test_latex_and_out_file(capsys, tmp_path, results):
    out_file = tmp_path / "sub" / "table.tex"
    rc, out, _ = main_out(capsys, ["--results", str(results), "--format", "latex", "--out", str(out_file)])
    assert rc == 0 and out == ""
    tex = out_file.read_text()
    assert "\\begin{tabular}" in tex and "\\toprule" in tex and "\\bottomrule" in tex
    assert "oxford\\_flowers102" in tex and "71.0 $\\pm$ 1.4" in tex
    body = [l for l in tex.splitlines() if l.endswith("\\\\")]
    assert all(l.count("&") == body[0].count("&") for l in body)


def test_plot_writes_png(capsys, results, tmp_path):
    png = tmp_path / "params.png"
    rc, _, err = main_out(capsys, ["--results", str(results), "--plot", str(png)])
    assert rc == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_reliability(capsys, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 10)) * 3
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    labels = rng.integers(0, 10, size=200)
    (tmp_path / "runs" / "a").mkdir(parents=True)
    np.savez(tmp_path / "runs" / "a" / "predictions.npz", probs=probs, labels=labels)
    rows = [
        run("pvera", "demo", 0, 90.0, run_dir="runs/a"),  # relative to the CSV's folder
        run("pvera", "demo", 1, 90.0, run_dir=str(tmp_path / "runs" / "a")),  # absolute
        run("lora", "demo", 0, 90.0, run_dir="runs/missing"),  # not selected
    ]
    path = write_csv(tmp_path / "results.csv", rows)
    monkeypatch.chdir(tmp_path / "runs")  # not the CSV's folder
    png = tmp_path / "rel.png"
    rc, _, err = main_out(capsys, ["--results", str(path), "--plot-reliability", str(png),
                                   "--task", "demo", "--adapter", "pvera"])
    assert rc == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # without run_dir: one error
    path2 = write_csv(tmp_path / "r2.csv", PVERA_RUNS)
    rc, _, err = main_out(capsys, ["--results", str(path2), "--plot-reliability", str(png)])
    assert rc == 2 and "run_dir" in err
    # nothing readable among the selected runs: one error
    rc, _, err = main_out(capsys, ["--results", str(path), "--plot-reliability", str(png), "--adapter", "lora"])
    assert rc == 2 and "predictions.npz" in err


def test_task_words_filters_that_match_nothing_and_mixed_settings(capsys, tmp_path):
    rows = PVERA_RUNS + [run("lora", "dtd", 0, 66.0, config_hash="a"), run("lora", "dtd", 0, 70.0, config_hash="b")]
    path = write_csv(tmp_path / "r.csv", rows)
    df, _, err = csv_table(capsys, ["--results", str(path), "--task", "natural"])
    assert "patch_camelyon" not in df.columns  # a task without results is no column
    df_all, _, _ = csv_table(capsys, ["--results", str(path), "--task", "natural", "--all-tasks"])
    assert "patch_camelyon" in df_all.columns and df_all["patch_camelyon"].isna().all()  # --all-tasks: all 19
    assert df.set_index("adapter").loc["pvera", "caltech101"] == 71.0 and df["cifar100"].notna().any()
    assert df.set_index("adapter").loc["lora", "dtd"] == 70.0  # the last of the two dtd runs
    assert "1 of those cells hold runs of different settings" in err
    rc, _, err = main_out(capsys, ["--results", str(path), "--adapter", "lroa"])
    assert rc == 2 and "--adapter lroa matches no run" in err and "lora, pvera" in err
    rc, _, err = main_out(capsys, ["--results", str(path), "--decimals", "-1"])
    assert rc == 2 and "--decimals" in err


def test_report_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, pvera_bench.report as r; r.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_run_dirs_of_results_copied_from_another_machine_are_found(tmp_path, monkeypatch):
    job = tmp_path / "copy" / "multirun" / "2026-01-01" / "10-00-00" / "0_demo_pvera_s0"
    job.mkdir(parents=True)
    np.savez(job / "predictions.npz", probs=np.eye(2, dtype=np.float32), labels=np.arange(2))
    csv_path = tmp_path / "copy" / "results.csv"
    monkeypatch.chdir(tmp_path)
    recorded = "/cluster/home/someone/pvera/multirun/2026-01-01/10-00-00/0_demo_pvera_s0"  # as written there
    assert report._resolve_run_dir(recorded, csv_path) == job
    assert report._resolve_run_dir("/cluster/home/someone/elsewhere/1_x", csv_path) is None
