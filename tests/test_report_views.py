"""The report's views beyond the table: settings, comparisons, ranks, references, figures, the metric registry."""

import io
import json
import math

import numpy as np
import pandas as pd
import pytest

from pvera_bench import metric_registry, report, results
from pvera_bench.report import references

from test_report import VTAB_ORDER, main_out, run, task_table, write_csv  # noqa: F401  (fixture)

PNG = b"\x89PNG\r\n\x1a\n"


def csv_of(capsys, argv):
    rc, out, err = main_out(capsys, argv + ["--format", "csv"])
    assert rc == 0, err
    return pd.read_csv(io.StringIO(out)), err


# ------------------------------------------------------------------------------ settings (issue 10.3)
def lora(seed, acc, r, **extra):
    return run("lora", "dtd", seed, acc, adapter_options=json.dumps({"alpha": 8.0, "r": r}), **extra)


def test_two_settings_of_one_adapter_are_two_rows_labelled_by_what_differs(capsys, tmp_path):
    path = write_csv(tmp_path / "r.csv", [lora(0, 70.0, 8), lora(1, 72.0, 8), lora(2, 80.0, 16), lora(3, 84.0, 16)])
    df, _ = csv_of(capsys, ["--results", str(path)])
    assert df["label"].tolist() == ["lora (r=16)", "lora (r=8)"]
    by = df.set_index("label")
    assert by.loc["lora (r=8)", "dtd"] == pytest.approx(71.0) and by.loc["lora (r=8)", "dtd_n_seeds"] == 2
    assert by.loc["lora (r=16)", "dtd"] == pytest.approx(82.0) and by.loc["lora (r=16)", "dtd_n_seeds"] == 2
    assert by.loc["lora (r=8)", "dtd_std"] == pytest.approx(math.sqrt(2))
    assert df["setting"].nunique() == 2 and all(len(s) == 12 for s in df["setting"])  # the setting's key
    assert json.loads(by.loc["lora (r=16)", "adapter_options"]) == {"alpha": 8.0, "r": 16}
    rc, md, _ = main_out(capsys, ["--results", str(path)])
    assert "| lora (r=8) | 71.0 ± 1.4 |" in md and "| lora (r=16) | 82.0 ± 2.8 |" in md
    assert "Rows sharing an adapter name are different settings" in md


def test_trainer_recipe_grid_and_task_filled_options_in_the_setting(capsys, tmp_path):
    t1, t2 = json.dumps({"epochs": 10, "lr_adapter": 0.001}), json.dumps({"epochs": 10, "lr_adapter": 0.01})
    grid = json.dumps([{"point": {"trainer.lr_adapter": 0.001}}, {"point": {"trainer.lr_adapter": 0.01}}])
    rows = [
        run("lora", "dtd", 0, 70.0, trainer=t1, recipe="noah"),
        run("lora", "dtd", 1, 72.0, trainer=t2, recipe="noah"),
        run("lora", "dtd", 2, 60.0, trainer=t1, recipe="noah", grid_scores=grid),
        run("lora", "dtd", 3, 62.0, trainer=t2, recipe="noah", grid_scores=grid),  # the grid chose another lr
        # PVeRA's beta comes from the task table: one setting across tasks
        run("pvera", "dtd", 0, 50.0, adapter_options=json.dumps({"r": 256, "beta": 10})),
        run("pvera", "cifar100", 0, 40.0, adapter_options=json.dumps({"r": 256, "beta": 1000})),
    ]
    df, _ = csv_of(capsys, ["--results", str(write_csv(tmp_path / "r.csv", rows))])
    assert set(df["label"]) == {"lora (lr_adapter=0.001, grid none)", "lora (lr_adapter=0.01, grid none)",
                                   "lora (grid trainer.lr_adapter∈[0.001, 0.01])", "pvera"}
    by = df.set_index("label")
    assert by.loc["lora (grid trainer.lr_adapter∈[0.001, 0.01])", "dtd"] == pytest.approx(61.0)
    assert by.loc["pvera", "mean_n_tasks"] == 2 and by.loc["pvera", "mean"] == pytest.approx(45.0)
    assert set(df["recipe"].dropna()) == {"noah"}


def test_cells_that_mix_code_versions_are_said(capsys, tmp_path):
    # the keys runs write (run.versions; tests/test_records.py feeds rows of real runs)
    v1 = json.dumps({"pvera-bench": "0.1.0", "pvera-bench-commit": "abc1234def9abc1234def9", "pvera-bench-dirty": False})
    v2 = json.dumps({"pvera-bench": "0.1.0", "pvera-bench-commit": "0123456789ab0123", "pvera-bench-dirty": True})
    path = write_csv(tmp_path / "r.csv", [run("vera", "dtd", 0, 60.0, versions=v1), run("vera", "dtd", 1, 61.0, versions=v2),
                                          run("vera", "svhn", 0, 60.0, versions=v1)])
    rc, md, _ = main_out(capsys, ["--results", str(path)])
    assert rc == 0 and ("Cells that mix code versions (`versions` differs between their seeds): vera / dtd "
                        "(0.1.0+g0123456789ab.dirty, 0.1.0+gabc1234def9a).") in md
    df, _ = csv_of(capsys, ["--results", str(path)])
    assert df["code_versions"].tolist() == ["0.1.0+g0123456789ab.dirty;0.1.0+gabc1234def9a"]


def test_tables_fit_their_content(capsys, tmp_path):
    path = write_csv(tmp_path / "r.csv", [run("lora", "demo", 0, 90.0), run("vera", "demo", 0, 80.0)])
    rc, md, _ = main_out(capsys, ["--results", str(path)])
    head = [c.strip() for c in md.splitlines()[0].strip("|").split("|")]
    assert head == ["adapter", "demo", "params_adapter"]  # no VTAB results: no empty VTAB or average columns
    assert "No VTAB-1k results" in md
    rc, md, _ = main_out(capsys, ["--results", str(path), "--all-tasks"])
    head = [c.strip() for c in md.splitlines()[0].strip("|").split("|")]
    assert head[1:21] == VTAB_ORDER + ["demo"]


# ------------------------------------------------------------------------------ --compare
T975_2 = 4.302652729911275  # Student t, 97.5th percentile, 2 degrees of freedom (printed tables: 4.303)
DIFFS = {"caltech101": [1, 2, 3], "cifar100": [0.5, 0.5, 0.5], "dtd": [-1, -2, 0], "svhn": [0, 0, 0], "sun397": [2, 4, 6]}


@pytest.fixture
def paired(tmp_path):
    rows = []
    for i, (t, ds) in enumerate(DIFFS.items()):
        for seed, d in enumerate(ds):
            base = 50.0 + 3 * i + seed
            rows += [run("pvera", t, seed, base + d), run("vera", t, seed, base)]
    rows.append(run("vera", "dsprites_loc", 0, 10.0))  # only one side: not compared
    return write_csv(tmp_path / "r.csv", rows)


def test_compare_against_a_hand_computation(capsys, paired):
    df, _ = csv_of(capsys, ["--results", str(paired), "--compare", "pvera", "vera"])
    per = df[df["task"] != "(over tasks)"].set_index("task")
    assert list(per.index) == ["caltech101", "cifar100", "dtd", "svhn", "sun397"]
    half = T975_2 / math.sqrt(3)  # sd / sqrt(n) with sd = 1 (caltech101, dtd) and 2 (sun397)
    assert per.loc["caltech101", "diff"] == pytest.approx(2.0)
    assert (per.loc["caltech101", "ci_low"], per.loc["caltech101", "ci_high"]) == pytest.approx((2 - half, 2 + half))
    assert (per.loc["dtd", "ci_low"], per.loc["dtd", "ci_high"]) == pytest.approx((-1 - half, -1 + half))
    assert (per.loc["sun397", "ci_low"], per.loc["sun397", "ci_high"]) == pytest.approx((4 - 2 * half, 4 + 2 * half))
    assert (per.loc["cifar100", "ci_low"], per.loc["cifar100", "ci_high"]) == pytest.approx((0.5, 0.5))
    assert (per["n_pairs"] == 3).all() and (per["test"] == "paired t, n=3").all()
    over = df[df["task"] == "(over tasks)"].iloc[0]
    assert over["diff"] == pytest.approx((2 + 0.5 - 1 + 0 + 4) / 5)
    assert (over["wins"], over["ties"], over["losses"]) == (3, 1, 1)
    # Wilcoxon by hand: the zero is dropped; |d| ranks 0.5->1, 1->2, 2->3, 4->4; W- = 2; of the 16 sign
    # patterns 3 have W- <= 2 ({}, {1}, {2}): two-sided p = 2 * 3 / 16
    from scipy import stats
    assert over["wilcoxon_p"] == pytest.approx(2 * 3 / 16)
    assert over["wilcoxon_p"] == pytest.approx(stats.wilcoxon([2, 0.5, -1, 0, 4]).pvalue)
    assert -1 <= over["ci_low"] <= 1.1 <= over["ci_high"] <= 4  # bootstrap of the task means
    df2, _ = csv_of(capsys, ["--results", str(paired), "--compare", "pvera", "vera"])
    assert df2["ci_low"].iloc[-1] == over["ci_low"]  # fixed seed: the same interval every time


def test_compare_markdown_latex_and_too_few_seeds(capsys, paired, tmp_path):
    rc, md, _ = main_out(capsys, ["--results", str(paired), "--compare", "pvera", "vera"])
    assert rc == 0 and "| caltech101 | 3 |" in md and "+2.0" in md and "3 wins, 1 tie, 1 loss over 5 tasks" in md
    rc, tex, _ = main_out(capsys, ["--results", str(paired), "--compare", "pvera", "vera", "--format", "latex"])
    assert rc == 0 and "\\begin{tabular}" in tex and "$\\Delta$" in tex
    path = write_csv(tmp_path / "one.csv", [run("a", "dtd", 0, 60.0), run("b", "dtd", 0, 58.0),
                                            run("a", "svhn", 0, 70.0), run("b", "svhn", 1, 71.0)])
    df, _ = csv_of(capsys, ["--results", str(path), "--compare", "a", "b"])
    per = df.set_index("task")
    assert per.loc["dtd", "test"] == "n=1: no interval" and math.isnan(per.loc["dtd", "ci_low"])
    assert per.loc["svhn", "test"].startswith("no common seed") and per.loc["svhn", "diff"] == pytest.approx(-1.0)
    rc, _, err = main_out(capsys, ["--results", str(path), "--compare", "a", "zzz"])
    assert rc == 2 and "--compare zzz: no such row" in err


def test_compare_two_settings_of_one_adapter_by_label(capsys, tmp_path):
    path = write_csv(tmp_path / "r.csv", [lora(0, 70.0, 8), lora(1, 72.0, 8), lora(0, 75.0, 16), lora(1, 76.0, 16)])
    rc, _, err = main_out(capsys, ["--results", str(path), "--compare", "lora", "lora (r=8)"])
    assert rc == 2 and "2 settings of lora" in err
    df, _ = csv_of(capsys, ["--results", str(path), "--compare", "lora (r=16)", "lora (r=8)"])
    assert df["diff"].iloc[0] == pytest.approx(4.5) and df["a_label"].iloc[0] == "lora (r=16)"


# ------------------------------------------------------------------------------ ranks
def test_ranks_and_friedman_against_a_hand_computation(capsys, tmp_path):
    rows = []
    for i, t in enumerate(["caltech101", "cifar100", "dtd", "svhn"]):
        rows += [run("a", t, 0, 90.0 - i), run("b", t, 0, 80.0 - i), run("c", t, 0, 70.0 - i)]
    rows += [run("a", "sun397", 0, 50.0)]  # not covered by all: no block
    path = write_csv(tmp_path / "r.csv", rows)
    df, _ = csv_of(capsys, ["--results", str(path), "--ranks"])
    assert df["label"].tolist() == ["a", "b", "c"] and df["average_rank"].tolist() == [1.0, 2.0, 3.0]
    # chi2 = 12 N / (k (k + 1)) * sum(R_j^2) - 3 N (k + 1) with N = 4 tasks, k = 3: 4 * 14 - 48 = 8; p = exp(-4)
    assert df["friedman_p"].iloc[0] == pytest.approx(math.exp(-4))
    rc, md, _ = main_out(capsys, ["--results", str(path), "--ranks"])
    assert "chi2 = 8.000" in md and "Ranks over the 4 blocks" in md
    png = tmp_path / "cd.png"
    rc, _, err = main_out(capsys, ["--results", str(path), "--plot-ranks", str(png)])
    assert rc == 0, err
    assert png.read_bytes()[:8] == PNG
    rc, _, err = main_out(capsys, ["--results", str(path), "--ranks", "--metric", "ece"])
    assert rc == 2 and "test_ece" in err


# ------------------------------------------------------------------------------ references
def test_shipped_references_are_complete():
    refs = references.available()
    assert set(refs) >= {"vpetl", "pvera_paper"}
    vpetl = refs["vpetl"]
    assert {r["method"] for r in vpetl.rows} == {"full fine-tuning", "linear probing", "Adapter", "LoRA", "AdaptFormer",
                                                 "VPT-Shallow", "VPT-Deep", "BitFit", "SSF"}
    for r in vpetl.rows:
        assert set(r["values"]) == set(VTAB_ORDER)
        assert np.mean(list(r["values"].values())) == pytest.approx(r["mean"], abs=0.005)  # printed means
    assert {r["mean"] for r in refs["pvera_paper"].rows} == {71.4, 69.9}


def test_reference_rows_and_delta(capsys, tmp_path):
    # the published LoRA row is NOAH's run (recipe noah); ours too, so no recipe warning
    rows = [run("lora", "cifar100", 0, 70.0, recipe="noah"), run("lora", "cifar100", 1, 68.0, recipe="noah"),
            run("lora", "caltech101", 0, 90.0, recipe="noah"), run("vera", "cifar100", 0, 60.0, recipe="noah")]
    path = write_csv(tmp_path / "r.csv", rows)
    df, _ = csv_of(capsys, ["--results", str(path), "--reference", "vpetl"])
    pub = df[(df["kind"] == "published") & (df["adapter"] == "lora")].iloc[0]
    assert pub["cifar100"] == 67.1 and pub["caltech101"] == 91.4 and pub["mean"] == 72.25
    delta = df[df["kind"] == "delta"]
    assert len(delta) == 1  # vera has no published row in this table
    d = delta.iloc[0]
    assert d["cifar100"] == pytest.approx(69.0 - 67.1) and d["caltech101"] == pytest.approx(90.0 - 91.4)
    assert d["mean"] == pytest.approx((69.0 + 90.0) / 2 - (67.1 + 91.4) / 2) and d["mean_n_tasks"] == 2
    rc, md, _ = main_out(capsys, ["--results", str(path), "--reference", "vpetl"])
    assert rc == 0 and "| published: LoRA [vpetl] |" in md and "| Δ lora − published: LoRA [vpetl] | -1.4 | +1.9 |" in md
    assert "Remaining recipe differences: published: best test accuracy over the evaluations made during " \
           "training (chosen on the test split), one seed; ours: top-1 test accuracy of the final model" in md
    rc, _, err = main_out(capsys, ["--results", str(path), "--reference", "nope"])
    assert rc == 2 and "vpetl" in err and "pvera_paper" in err
    png = tmp_path / "h.png"
    rc, _, err = main_out(capsys, ["--results", str(path), "--reference", "vpetl", "--plot-heatmap", str(png)])
    assert rc == 0, err
    assert png.read_bytes()[:8] == PNG


def test_reference_of_means_only_needs_all_19_tasks(capsys, tmp_path):
    rows = [run("pvera", t, 0, 70.0 + (i % 3), backbone="dinov2_vitb14") for i, t in enumerate(VTAB_ORDER)]
    path = write_csv(tmp_path / "r.csv", rows)
    df, _ = csv_of(capsys, ["--results", str(path), "--reference", "pvera_paper"])
    d = df[df["kind"] == "delta"].iloc[0]
    ours = np.mean([70.0 + (i % 3) for i in range(19)])
    assert d["mean"] == pytest.approx(ours - 71.4) and math.isnan(d["cifar100"])


def test_metric_acc_max_is_named_optimistic(capsys, tmp_path):
    path = write_csv(tmp_path / "r.csv", [run("lora", "dtd", 0, 70.0, test_acc_max=73.0)])
    rc, md, _ = main_out(capsys, ["--results", str(path), "--metric", "acc_max"])
    assert rc == 0 and "| lora | 73.0 |" in md and "optimistic" in md


# ------------------------------------------------------------------------------ figures
def write_history(d, epochs, test=False):
    d.mkdir(parents=True)
    rows = [dict(fit="select-0", epoch=e, lr=1e-3, train_loss=2.0 / e, train_acc=10.0 * e, val_acc=9.0 * e,
                 val_loss=2.5 / e, test_acc=(8.0 * e if test else None), seconds=0.1) for e in range(1, epochs + 1)]
    pd.DataFrame(rows).to_csv(d / "history.csv", index=False)


def test_heatmap_and_curves(capsys, tmp_path):
    write_history(tmp_path / "runs" / "a", 5)
    write_history(tmp_path / "runs" / "b", 4, test=True)
    rows = [run("lora", "demo", 0, 60.0, run_dir="runs/a"), run("vera", "demo", 0, 50.0, run_dir="runs/b"),
            run("ia3", "demo", 0, 40.0, run_dir="runs/missing")]
    path = write_csv(tmp_path / "results.csv", rows)
    curves = tmp_path / "curves.png"
    rc, _, err = main_out(capsys, ["--results", str(path), "--plot-curves", str(curves)])
    assert rc == 0, err
    assert curves.read_bytes()[:8] == PNG and "(2 runs)" in err and "1 selected run without history.csv" in err
    heat = tmp_path / "heat.png"
    rc, _, err = main_out(capsys, ["--results", str(path), "--plot-heatmap", str(heat), "--baseline", "ia3"])
    assert rc == 0, err
    assert heat.read_bytes()[:8] == PNG
    rc, _, err = main_out(capsys, ["--results", str(path), "--plot-curves", str(curves), "--fit", "final"])
    assert rc == 2 and "no usable history.csv" in err


# ------------------------------------------------------------------------------ the metric registry
def test_metric_registry_is_the_one_list():
    for m in metric_registry.METRICS.values():
        assert report.METRIC_COLUMNS[m.name] == m.column
        assert m.column in results.COLUMNS
    assert metric_registry.by_column("test_nll").higher_is_better is False
    assert report.build_parser().parse_args(["--metric", "acc_max"]).metric == "acc_max"


# ------------------------------------------------------------------------------ metric directions
# Known answers, written here and not read from the registry: which way each metric is better.
BETTER = {"acc": "higher", "acc_max": "higher", "val_acc": "higher", "nll": "lower", "ece": "lower",
          "brier": "lower", "auroc": "higher", "auroc_entropy": "higher"}


def test_every_metric_has_a_known_direction():
    assert set(BETTER) == set(metric_registry.METRICS)


@pytest.mark.parametrize("name", sorted(BETTER))
def test_compare_and_ranks_score_each_metric_in_its_direction(capsys, tmp_path, name):
    """``big`` has the larger value on every task (by 0.5 to 1.5); ``small`` the smaller."""
    col = metric_registry.METRICS[name].column
    rows = []
    for i, t in enumerate(["caltech101", "cifar100", "dtd"]):
        for seed in (0, 1):
            low = 0.2 + 0.1 * i + 0.01 * seed  # a fraction, a percent or nats: any scale is fine here
            for adapter, value in (("small", low), ("big", low + 0.5 + 0.5 * i)):
                rows.append(dict(run(adapter, t, seed, 50.0), **{col: value}))
    path = write_csv(tmp_path / "r.csv", rows)
    df, _ = csv_of(capsys, ["--results", str(path), "--metric", name, "--compare", "big", "small"])
    over = df[df["task"] == "(over tasks)"].iloc[0]
    assert over["diff"] == pytest.approx(1.0)  # big - small, whatever the direction
    wins = (3, 0, 0) if BETTER[name] == "higher" else (0, 0, 3)
    assert (over["wins"], over["ties"], over["losses"]) == wins
    ranks, _ = csv_of(capsys, ["--results", str(path), "--metric", name, "--ranks"])
    by = ranks.set_index("label")["average_rank"]
    best = "big" if BETTER[name] == "higher" else "small"
    assert by[best] == 1.0 and by[({"big", "small"} - {best}).pop()] == 2.0
