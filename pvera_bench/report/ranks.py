"""``--ranks`` / ``--plot-ranks``: average ranks of the settings over the tasks all of them cover.

Per task (a *block*), the settings are ranked on their mean over seeds (rank 1 = best, following
the metric's direction; ties share the average rank, ``scipy.stats.rankdata``); a setting's average
rank is the mean over the blocks. ``--rank-blocks task-seed`` makes each (task, seed) that every
setting ran a block instead (for a single task run with several seeds, such as the demo).

The Friedman test (``scipy.stats.friedmanchisquare``) asks whether the settings' ranks differ at
all; it needs at least 3 settings and 2 blocks. The critical-difference diagram draws the average
ranks and joins settings that the Nemenyi post-hoc test (scikit-posthocs,
``posthoc_nemenyi_friedman``) does not tell apart at alpha 0.05.

Rows of different backbones (or protocols) are ranked apart, one ranking per backbone
(:func:`compute_groups`): the rows of one adapter on two backbones share a label, and a rank across
backbones would compare the backbones, not the adapters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..metric_registry import Metric
from .load import ReportError


@dataclass
class Ranks:
    blocks: list[str]
    scores: pd.DataFrame  # blocks x settings (labels), the metric
    ranks: pd.DataFrame  # blocks x settings, 1 = best
    average: pd.Series  # label -> average rank, best first
    friedman_stat: float
    friedman_p: float
    friedman_note: str


def block_scores(runs: pd.DataFrame, names: dict[str, str], blocks: str = "task") -> pd.DataFrame:
    """Blocks x settings of the metric (per-task means, or per (task, seed) values), keeping only
    the blocks every setting covers."""
    if blocks == "task":
        wide = runs.groupby(["task", "setting"])["value"].mean().unstack("setting")
    else:
        wide = runs.groupby(["task", "seed", "setting"])["value"].mean().unstack("setting")
        wide.index = [f"{t}/seed {s}" for t, s in wide.index]
    wide = wide.dropna(how="any")
    return wide.rename(columns=names)


def compute(runs: pd.DataFrame, names: dict[str, str], metric: Metric, blocks: str = "task") -> Ranks:
    from scipy import stats

    scores = block_scores(runs, names, blocks)
    if scores.shape[1] < 2:
        raise ReportError("--ranks: ranks need at least two rows")
    if scores.empty:
        raise ReportError(f"--ranks: no {'task' if blocks == 'task' else '(task, seed)'} is covered by every row; "
                          "select the rows with --adapter / --task")
    sign = -1.0 if metric.higher_is_better else 1.0
    ranks = pd.DataFrame(np.vstack([stats.rankdata(sign * r) for r in scores.to_numpy()]),
                         index=scores.index, columns=scores.columns)
    average = ranks.mean().sort_values()
    k, n = scores.shape[1], scores.shape[0]
    stat = p = math.nan
    if k < 3:
        note = "Friedman test: needs at least 3 rows (for two, use --compare)"
    elif n < 2:
        note = "Friedman test: needs at least 2 blocks"
    else:
        res = stats.friedmanchisquare(*[scores[c].to_numpy() for c in scores.columns])
        stat, p = float(res.statistic), float(res.pvalue)
        note = f"Friedman test over {n} blocks and {k} rows: chi2 = {stat:.3f}, p = {p:.4g}"
    return Ranks(list(scores.index), scores, ranks, average, stat, p, note)


GROUP_COLUMNS = ("backbone", "protocol")  # rows that differ in these are never ranked together


def compute_groups(runs: pd.DataFrame, names: dict[str, str], metric: Metric,
                   blocks: str = "task") -> list[tuple[dict[str, str], Ranks]]:
    """``[(group, Ranks)]``: one ranking per backbone (and protocol) among those of ``runs`` (one
    group ``{}`` when they all share one); a group with a single row is left out, and when none
    has two rows the error says that ranks are per backbone."""
    keys = [k for k in GROUP_COLUMNS if k in runs.columns and runs[k].nunique() > 1]
    if not keys:
        return [({}, compute(runs, names, metric, blocks))]
    out, skipped = [], []
    for values, part in runs.groupby(keys, sort=True):
        group = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        try:
            out.append((group, compute(part, names, metric, blocks)))
        except ReportError as e:
            skipped.append(f"{_title(group)}: {e}")
    if not out:
        raise ReportError(f"--ranks: rows of different {' and '.join(keys)}s are ranked apart, and no "
                          f"{' and '.join(keys)} has two rows to rank ({'; '.join(skipped)}); select the rows with "
                          f"--{keys[0]}")
    return out


def _title(group: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in group.items())


def grouped_text(groups: list[tuple[dict[str, str], Ranks]], fmt: str, decimals: int, render) -> str:
    """The ranks view of every group: ``render(fmt, head, body, notes, n_label)`` per group, each
    under its title (md, latex); for csv one frame, the group's columns first."""
    if fmt == "csv":
        frames = [to_frame(r).assign(**{k: v for k, v in g.items()}) for g, r in groups]
        df = pd.concat(frames, ignore_index=True)
        first = list(groups[0][0])
        return df[first + [c for c in df.columns if c not in first]].to_csv(index=False)
    parts = []
    for g, r in groups:
        text = render(fmt, *cells(r, decimals), 1)
        parts.append(text if not g else (f"**{_title(g)}**\n\n" if fmt == "md" else f"% {_title(g)}\n") + text)
    return "\n".join(parts)


def cells(r: Ranks, decimals: int) -> tuple[list[str], list[list[str]], list[str]]:
    head = ["adapter", "average rank"] + [str(b) for b in r.blocks]
    body = [[label, f"{r.average[label]:.2f}"] + [f"{r.ranks.loc[b, label]:g}" for b in r.blocks]
            for label in r.average.index]
    notes = [f"Ranks over the {len(r.blocks)} blocks every row covers (1 = best; ties share the average rank).",
             r.friedman_note + "."]
    return head, body, notes


def to_frame(r: Ranks) -> pd.DataFrame:
    df = r.ranks.T.loc[r.average.index]
    df.insert(0, "average_rank", r.average)
    df.insert(0, "label", df.index)
    df["friedman_p"] = r.friedman_p
    return df.reset_index(drop=True)


def plot(groups: list[tuple[dict[str, str], Ranks]], metric: Metric, path) -> list[dict]:
    """Critical-difference diagram (Nemenyi, scikit-posthocs) of the average ranks, one panel per
    group (backbone, protocol); returns each panel's artists (``crossbars``: one list of lines per
    set of rows the test does not separate). A group with fewer than 2 blocks or 3 rows has no panel
    (the test cannot run, and a diagram without it would join every row in one bar); refused when
    no group has one."""
    import scikit_posthocs as sp
    from matplotlib.figure import Figure

    groups = [(g, r) for g, r in groups if len(r.blocks) >= 2 and len(r.average) >= 3]
    if not groups:
        raise ReportError("--plot-ranks: a critical-difference diagram needs at least 2 blocks and 3 rows in one "
                          "backbone and protocol; this selection has fewer (several seeds of one task: "
                          "--rank-blocks task-seed)")
    heights = [1.2 + 0.3 * len(r.average) for _, r in groups]
    fig = Figure(figsize=(8, sum(heights) + 0.6 * (len(groups) - 1)))
    axes = fig.subplots(len(groups), 1, squeeze=False, gridspec_kw=dict(height_ratios=heights))[:, 0]
    artists = []
    for ax, (g, r) in zip(axes, groups):
        sig = sp.posthoc_nemenyi_friedman(r.scores.to_numpy())
        sig.index = sig.columns = list(r.scores.columns)
        title = (f"Average rank over {len(r.blocks)} blocks ({metric.column}); bars join rows the Nemenyi test "
                 f"does not separate (alpha 0.05)\n{r.friedman_note}")
        artists.append(sp.critical_difference_diagram(r.average, sig, ax=ax))
        ax.set_title(f"{_title(g)}: {title}" if _title(g) else title, fontsize=8, pad=24)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return artists
