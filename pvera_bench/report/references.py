"""``--reference NAME``: published numbers beside ours, with a Δ row per matched adapter.

Each reference is one YAML file in ``pvera_bench/report/references/`` (shipped in the wheel):
``name``, ``title``, ``source`` (repository, path, commit, table), ``backbone``,
``test_number`` (what the published test number is), ``comparable_metric`` (our ``--metric``
chosen the same way), ``differences`` (recipe differences that remain, for the legend) and
``rows`` (``method``, ``adapter`` = our adapter's name or null, optionally ``adapter_options``
that our row must have too, e.g. ``{depth: deep}`` for VPT-Deep, ``recipe`` = the recipe that
produced the row (a ``configs/recipe/`` name, or the name of a source this tool has no recipe for)
with ``recipe_note`` saying how that is known, ``params`` as printed, ``mean`` as printed,
``values`` per task). Adding a reference is one file; a plugin package adds a folder of them
(``pvera_bench.registry.add_references``).

A Δ row (ours − published) is made for each of our rows whose adapter and backbone match a
published row, and whose adapter options include the row's ``adapter_options``: per task where
both have a value; on ``mean`` over the tasks both have (the published per-task values averaged
over our tasks), or, for a reference that publishes only the mean, ours − that mean when ours
covers all 19 tasks. A Δ row whose two rows come from different recipes (ours: the CSV's
``recipe``) says so in its label, and the legend names each such pair.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import pandas as pd
import yaml

from .. import registry
from .load import ReportError
from .table import aggregates


@dataclass
class Reference:
    name: str
    title: str
    source: dict
    backbone: str
    test_number: str
    comparable_metric: str
    differences: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)

    def citation(self) -> str:
        s = self.source
        return f"{s.get('repo', '')} {s.get('path', '')} @ {s.get('commit', '')}, {s.get('table', '')}".strip()


def _files():
    """The shipped reference files, then those of installed plugins (``registry.add_references``)."""
    try:
        plugin_dirs = registry.reference_dirs()
    except registry.PluginError as e:
        raise ReportError(str(e)) from None
    folders = [resources.files(__package__).joinpath("references"), *plugin_dirs]
    return [p for d in folders for p in sorted((q for q in d.iterdir() if q.name.endswith(".yaml")), key=lambda q: q.name)]


def available() -> dict[str, Reference]:
    out = {}
    for p in _files():
        d = yaml.safe_load(p.read_text(encoding="utf-8"))
        if d["name"] in out:
            raise ReportError(f"reference file {p} names its reference {d['name']!r}, which another reference file "
                              f"already uses; rename one of them")
        out[d["name"]] = Reference(**d)
    return out


def get(name: str) -> Reference:
    refs = available()
    if name not in refs:
        raise ReportError(f"unknown --reference {name!r}; shipped references: "
                          + ", ".join(f"{n} ({r.title})" for n, r in refs.items()))
    return refs[name]


def published_rows(ref: Reference, vtab: list[str]) -> pd.DataFrame:
    """One table row per published method (same columns as the main table)."""
    rows = []
    for r in ref.rows:
        values = {t: float(v) for t, v in (r.get("values") or {}).items()}
        row: dict[str, object] = dict(adapter=r.get("adapter") or "", backbone=ref.backbone, protocol="published",
                                      recipe=r["recipe"], label=f"published: {r['method']} [{ref.name}]",
                                      setting=f"{ref.name}:{r['method']}", kind="published")
        for t, v in values.items():
            row[t], row[f"{t}_n_seeds"] = v, 1
        row.update(aggregates(values, vtab))
        row["mean"] = float(r["mean"]) if r.get("mean") is not None else row["mean"]  # as printed
        row["mean_n_tasks"] = len(vtab) if r.get("mean") is not None else row["mean_n_tasks"]
        row["params_adapter"] = math.nan
        row["_published_params"] = r.get("params") or ""
        row["_values"] = values
        row["_recipe_note"] = r.get("recipe_note") or ""
        row["_options"] = dict(r.get("adapter_options") or {})
        rows.append(row)
    return pd.DataFrame(rows)


def delta_rows(table: pd.DataFrame, published: pd.DataFrame, vtab: list[str], tasks: list[str]) -> pd.DataFrame:
    """Ours − published for each of our rows whose adapter and backbone match a published row."""
    rows = []
    for _, ours in table.iterrows():
        match = published[(published["adapter"] == ours["adapter"]) & (published["backbone"] == ours["backbone"])]
        opts = _options(ours.get("adapter_options"))
        for _, pub in match.iterrows():
            if any(opts.get(k) != v for k, v in pub["_options"].items()):
                continue
            values = pub["_values"]
            label = f"Δ {ours['label']} − {pub['label']}"
            mismatch = (ours["recipe"] or "") != pub["recipe"]
            if mismatch:
                label += f" (recipes differ: {ours['recipe'] or 'none recorded'} vs {pub['recipe']})"
            row: dict[str, object] = dict(adapter=ours["adapter"], backbone=ours["backbone"], protocol=ours["protocol"],
                                          recipe=ours["recipe"], label=label, setting=ours["setting"], kind="delta",
                                          published_recipe=pub["recipe"], recipe_mismatch=mismatch,
                                          _pair=(ours["label"], pub["label"], pub["_recipe_note"]))
            ours_tasks = [t for t in vtab if t in ours and not _nan(ours[t])]
            for t in tasks:
                if t in values and t in ours and not _nan(ours[t]):
                    row[t] = float(ours[t]) - values[t]
                    row[f"{t}_n_seeds"] = 1
            both = [t for t in ours_tasks if t in values]
            if both:
                d = {t: float(ours[t]) - values[t] for t in both}
                row.update(aggregates(d, vtab))
                row["mean"] = float(np.mean([float(ours[t]) for t in both])) - float(np.mean([values[t] for t in both]))
                row["mean_n_tasks"] = len(both)
            elif not values and len(ours_tasks) == len(vtab) and not _nan(pub["mean"]):
                row.update(aggregates({}, vtab))
                row["mean"], row["mean_n_tasks"] = float(ours["mean"]) - float(pub["mean"]), len(vtab)
            else:
                row.update(aggregates({}, vtab))
            row["params_adapter"] = math.nan
            rows.append(row)
    return pd.DataFrame(rows)


def _options(text) -> dict:
    try:
        d = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        d = {}
    return d if isinstance(d, dict) else {}


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def legend(ref: Reference, metric_name: str, metric_description: str, deltas: pd.DataFrame) -> list[str]:
    n_delta = len(deltas)
    lines = [f"Reference {ref.name}: {ref.title}; {ref.citation()}. Published test number: {ref.test_number}.",
             f"Δ rows: ours − published per task and on the means over the tasks both have ({n_delta} matched "
             f"row{'s' if n_delta != 1 else ''}; matched by adapter and backbone {ref.backbone})."]
    for _, d in deltas.iterrows() if n_delta else ():
        if d.get("recipe_mismatch"):
            ours, pub, note = d["_pair"]
            lines.append(f"Recipe mismatch: {ours} ran recipe {d['recipe'] or '(none recorded)'}, {pub} was produced "
                         f"by recipe {d['published_recipe']} ({note}); the Δ mixes recipes.")
    diffs = list(ref.differences)
    if metric_name != ref.comparable_metric:
        diffs.insert(0, f"published: {ref.test_number}; ours: {metric_description} (--metric {ref.comparable_metric} "
                        "is chosen like theirs)")
    lines.append("Remaining recipe differences: " + "; ".join(diffs) + ".")
    lines.append("Published rows' params as printed: " + ", ".join(
        f"{r['method']} {r.get('params')}" for r in ref.rows if r.get("params") is not None) + ".")
    return lines
