"""``--compare A B``: paired differences between two settings (two adapters, or two settings of one).

Per task both cover: the differences ``A − B`` of the runs paired by seed (the seeds both ran),
their mean and a 95% Student t-interval, ``mean ± t(0.975, n−1) · sd / √n`` (sample sd, ddof=1).
With one paired seed there is no interval (the test column says ``n=1: no interval``); with no
common seed the difference of the two means is shown, unpaired, without an interval.

Over the tasks: the mean of the per-task differences with a 95% percentile bootstrap interval
(10,000 resamples of the tasks, fixed seed 0), the win / tie / loss counts of A against B (a tie:
a per-task difference that rounds to 0 at the table's decimals; which sign wins follows the
metric's direction), and the two-sided Wilcoxon signed-rank p-value of the per-task differences
(scipy; needs a nonzero difference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..metric_registry import Metric
from .load import ReportError
from .table import fmt

N_BOOT = 10_000
BOOT_SEED = 0


def resolve(name: str, table: pd.DataFrame) -> str:
    """The setting id that ``name`` (a row label, a setting id or an adapter with one row) means."""
    for col in ("label", "setting"):
        hit = table[table[col] == name]
        if len(hit) == 1:
            return str(hit["setting"].iloc[0])
    hit = table[table["setting"].str.startswith(name)] if len(name) >= 6 else table.iloc[0:0]
    if len(hit) == 1:
        return str(hit["setting"].iloc[0])
    hit = table[table["adapter"] == name]
    if len(hit) == 1:
        return str(hit["setting"].iloc[0])
    rows = ", ".join(f"{r['label']!r} ({r['setting']})" for _, r in table.iterrows())
    if len(hit) > 1:
        raise ReportError(f"--compare {name}: {len(hit)} settings of {name}; name one by its label or setting id: "
                          f"{rows}")
    raise ReportError(f"--compare {name}: no such row; the rows are {rows}")


def t_interval(d: np.ndarray) -> tuple[float, float]:
    from scipy import stats

    n = len(d)
    half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)
    return float(d.mean() - half), float(d.mean() + half)


@dataclass
class Comparison:
    per_task: pd.DataFrame  # task, n_pairs, a, b, diff, ci_low, ci_high, test
    mean_diff: float
    boot_low: float
    boot_high: float
    wins: int
    ties: int
    losses: int
    wilcoxon_p: float
    wilcoxon_note: str


def compare(runs: pd.DataFrame, a: str, b: str, metric: Metric, decimals: int, tasks: list[str]) -> Comparison:
    """Compare settings ``a`` and ``b`` (ids) on ``tasks`` (those both cover, in this order)."""
    from scipy import stats

    ra, rb = runs[runs["setting"] == a], runs[runs["setting"] == b]
    rows = []
    for t in tasks:
        va = ra[ra["task"] == t].set_index("seed")["value"]
        vb = rb[rb["task"] == t].set_index("seed")["value"]
        if va.empty or vb.empty:
            continue
        common = sorted(set(va.index) & set(vb.index), key=lambda s: (len(s), s))
        lo = hi = math.nan
        if common:
            d = (va[common] - vb[common]).to_numpy(dtype=float)
            diff = float(d.mean())
            if len(d) >= 2:
                lo, hi = t_interval(d)
                test = f"paired t, n={len(d)}"
            else:
                test = "n=1: no interval"
            ma, mb = float(va[common].mean()), float(vb[common].mean())
        else:
            ma, mb = float(va.mean()), float(vb.mean())
            diff = ma - mb
            test = "no common seed: unpaired difference of means, no interval"
        rows.append(dict(task=t, n_pairs=len(common), a=ma, b=mb, diff=diff, ci_low=lo, ci_high=hi, test=test))
    per_task = pd.DataFrame(rows, columns=["task", "n_pairs", "a", "b", "diff", "ci_low", "ci_high", "test"])
    if per_task.empty:
        raise ReportError("--compare: the two rows share no task")
    d = per_task["diff"].to_numpy(dtype=float)
    sign = 1.0 if metric.higher_is_better else -1.0
    tie = np.round(d, decimals) == 0
    wins = int(((sign * d > 0) & ~tie).sum())
    losses = int(((sign * d < 0) & ~tie).sum())
    boot_low = boot_high = math.nan
    if len(d) >= 2:
        res = stats.bootstrap((d,), np.mean, n_resamples=N_BOOT, confidence_level=0.95, method="percentile",
                              random_state=np.random.default_rng(BOOT_SEED))
        boot_low, boot_high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if np.all(d == 0):
        p, note = math.nan, "all per-task differences are 0: no Wilcoxon test"
    else:
        p = float(stats.wilcoxon(d).pvalue)
        note = f"Wilcoxon signed-rank, two-sided, n={len(d)} tasks"
    return Comparison(per_task, float(d.mean()), boot_low, boot_high, wins, int(tie.sum()), losses, p, note)


def to_frame(c: Comparison, label_a: str, label_b: str) -> pd.DataFrame:
    """The ``--format csv`` frame: one row per task, then one ``(over tasks)`` row."""
    df = c.per_task.copy()
    df.insert(0, "b_label", label_b)
    df.insert(0, "a_label", label_a)
    for col in ("wins", "ties", "losses", "wilcoxon_p"):
        df[col] = math.nan
    over = dict(a_label=label_a, b_label=label_b, task="(over tasks)", n_pairs=len(df), a=df["a"].mean(),
                b=df["b"].mean(), diff=c.mean_diff, ci_low=c.boot_low, ci_high=c.boot_high,
                test=f"bootstrap percentile 95% over tasks ({N_BOOT} resamples, seed {BOOT_SEED}); {c.wilcoxon_note}",
                wins=c.wins, ties=c.ties, losses=c.losses, wilcoxon_p=c.wilcoxon_p)
    return pd.concat([df, pd.DataFrame([over])], ignore_index=True)


def cells(c: Comparison, label_a: str, label_b: str, metric: Metric, decimals: int) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, body and notes of the md / latex comparison."""
    head = ["task", "pairs", label_a, label_b, "Δ (A − B)", "95% interval", "test"]
    body = []

    def interval(lo, hi) -> str:
        return "" if math.isnan(lo) else f"[{fmt(lo, decimals)}, {fmt(hi, decimals)}]"

    for _, r in c.per_task.iterrows():
        body.append([r["task"], str(r["n_pairs"]), fmt(r["a"], decimals), fmt(r["b"], decimals),
                     f"{r['diff']:+.{decimals}f}", interval(r["ci_low"], r["ci_high"]), r["test"]])
    body.append([f"mean over {len(c.per_task)} tasks", "", fmt(c.per_task["a"].mean(), decimals),
                 fmt(c.per_task["b"].mean(), decimals), f"{c.mean_diff:+.{decimals}f}",
                 interval(c.boot_low, c.boot_high), "bootstrap over tasks" if not math.isnan(c.boot_low)
                 else "one task: no interval"])
    p = "n/a" if math.isnan(c.wilcoxon_p) else f"{c.wilcoxon_p:.4g}"
    notes = [
        f"A = {label_a}, B = {label_b}; metric {metric.column} ({metric.description}; {metric.direction}).",
        "Per task: Δ = mean over the seeds both ran of (A − B), paired by seed; 95% Student t-interval over the "
        "paired differences (none with fewer than 2 pairs).",
        f"Over tasks: mean of the per-task Δ, 95% percentile bootstrap interval ({N_BOOT} resamples of the tasks, "
        f"seed {BOOT_SEED}).",
        f"A against B: {c.wins} win{'s' if c.wins != 1 else ''}, {c.ties} tie{'s' if c.ties != 1 else ''}, "
        f"{c.losses} loss{'es' if c.losses != 1 else ''} over {len(c.per_task)} tasks (tie: Δ rounds to 0 at "
        f"{decimals} decimals). {c.wilcoxon_note}: p = {p}.",
    ]
    return head, body, notes
