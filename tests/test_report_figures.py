"""The report's figures read at their size: distinct colours for a twelve-run sweep, every panel of
twelve runs, labels that neither overlap nor squeeze the axes, long labels inside the figure, and a
critical-difference diagram refused where the Nemenyi test cannot run."""

import math

import matplotlib.figure
import numpy as np
import pandas as pd
import pytest

from pvera_bench.metric_registry import METRICS
from pvera_bench.report import figures, ranks
from pvera_bench.report.load import ReportError

ADAPTERS = ["adaptformer", "bitfit", "bottleneck", "dora", "full", "ia3", "linear_probe", "lora", "pvera", "ssf",
            "vera", "vpt"]


@pytest.fixture
def drawn(monkeypatch):
    """Every Figure saved during the test (the file is still written)."""
    figs = []
    save = matplotlib.figure.Figure.savefig

    def capture(self, *a, **kw):
        figs.append(self)
        return save(self, *a, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", capture)
    return figs


def render(fig):
    """Draw ``fig`` as savefig does (Agg), so that layouts run and extents are those of the file."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return fig


def twelve_runs(tmp_path):
    rows = []
    rng = np.random.default_rng(0)
    for i, name in enumerate(ADAPTERS):
        d = tmp_path / "runs" / name
        d.mkdir(parents=True)
        pd.DataFrame([dict(fit="final", epoch=e, train_loss=2.0 / e + i / 10, val_acc=5.0 * e + i, val_loss=2.5 / e)
                      for e in range(1, 6)]).to_csv(d / "history.csv", index=False)
        logits = rng.normal(size=(100, 10)) * 3
        np.savez(d / "predictions.npz", probs=(np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32),
                 labels=rng.integers(0, 10, size=100))
        rows.append(dict(adapter=name, backbone="vit_tiny_pretrained", protocol="holdout", task="demo", seed=0,
                         setting=name, run_dir=str(d), line=i + 2))
    return pd.DataFrame(rows), {n: n for n in ADAPTERS}


def test_curves_of_twelve_runs_have_twelve_colours_and_a_legend_outside_the_panels(tmp_path, drawn):
    runs, names = twelve_runs(tmp_path)
    assert figures.plot_curves(runs, names, tmp_path / "r.csv", tmp_path / "c.png") == 12
    fig = drawn[-1]
    axes = [ax for ax in fig.axes if ax.lines]
    colours = {tuple(line.get_color()) for line in axes[0].lines}
    assert len(colours) == 12
    render(fig)
    (legend,) = fig.legends
    box = legend.get_window_extent()
    for ax in axes:
        assert figures._overlap(box, ax.get_window_extent()) == 0


def test_reliability_draws_every_panel_of_twelve_runs(tmp_path, drawn):
    runs, names = twelve_runs(tmp_path)
    figures.plot_reliability(runs, names, tmp_path / "r.csv", tmp_path / "r.png")
    assert sum(ax.get_visible() for ax in drawn[-1].axes) == 12


def test_params_labels_of_close_points_do_not_overlap(tmp_path, drawn):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot()
    points = [("lora", 8192.0, 80.68), ("dora", 8704.0, 80.55), ("bottleneck", 8768.0, 76.54), ("ssf", 5888.0, 81.81)]
    ax.scatter([p for _, p, _ in points], [y for *_, y in points])
    ax.set_xscale("log")
    ax.margins(x=0.3, y=0.12)
    labels = figures.place_labels(ax, points)
    render(fig)
    boxes = [a.get_window_extent() for a in labels]
    assert all(figures._overlap(a, b) == 0 for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_a_long_label_neither_clips_nor_squeezes(tmp_path, drawn):
    long = "lora (r=16, alpha=32, targets=qkv, dropout=0.1, init=noah, backbone=vit_tiny_random, recipe=vpetl)"
    matrix = pd.DataFrame({"demo": [1.5, -2.0], "dtd": [0.5, 3.0]}, index=["vera", long])
    figures.plot_heatmap(matrix, "test_acc difference to linear_probe (a title as long as a setting label can make it)",
                         tmp_path / "h.png", 1, True)
    fig = drawn[-1]
    render(fig)
    frame = fig.bbox
    ax = fig.axes[0]
    for text in [fig._suptitle, *ax.get_yticklabels(), *ax.get_xticklabels()]:
        box = text.get_window_extent()
        assert box.x0 >= frame.x0 - 1 and box.x1 <= frame.x1 + 1, text.get_text()
    # --plot: the axes keep a usable share of the figure whatever the labels
    table = pd.DataFrame([dict(label=long, mean_n_tasks=0, params_adapter=8192.0, demo=80.0),
                          dict(label="vera", mean_n_tasks=0, params_adapter=2560.0, demo=76.0)])
    runs = pd.DataFrame([dict(task="demo")])
    figures.plot_params(table, runs, METRICS["acc"], tmp_path / "p.png")
    fig = drawn[-1]
    width = fig.axes[0].get_position().width
    assert width > 0.6


def test_cd_diagram_refuses_one_block_and_separates_a_clear_order():
    metric = METRICS["acc"]
    scores = pd.DataFrame({"a": [90.0], "b": [80.0], "c": [70.0]}, index=["demo/seed 0"])
    one = ranks.Ranks(["demo/seed 0"], scores, scores.rank(axis=1, ascending=False), pd.Series({"a": 1.0, "b": 2.0, "c": 3.0}),
                      math.nan, math.nan, "")
    with pytest.raises(ReportError, match="at least 2 blocks"):
        ranks.plot([({}, one)], metric, "unused.png")


def test_cd_diagram_bars_join_only_rows_the_test_does_not_separate(tmp_path):
    blocks = [f"t{i}" for i in range(12)]
    scores = pd.DataFrame({"a": 90.0, "b": 80.0, "c": 70.0, "d": 60.0}, index=blocks)
    scores += np.random.default_rng(0).normal(scale=0.1, size=scores.shape)
    r = ranks.Ranks(blocks, scores, scores.rank(axis=1, ascending=False), pd.Series({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}),
                    math.nan, math.nan, "")
    (artists,) = ranks.plot([({}, r)], METRICS["acc"], tmp_path / "cd.png")
    spans = [max(x for line in bar for x in line.get_xdata()) - min(x for line in bar for x in line.get_xdata())
             for bar in artists["crossbars"]]
    # 12 blocks, k = 4: the Nemenyi critical difference is 2.569 * sqrt(4 * 5 / (6 * 12)) = 1.35 ranks, so a and d
    # (3 ranks apart) and a and c (2 apart) are separated: no bar spans more than one rank
    assert all(s <= 1.0 + 1e-9 for s in spans)
