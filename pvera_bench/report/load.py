"""Loading the results CSV and grouping its runs into settings.

A *setting* is what one table row stands for: the adapter and its options, the backbone, the
recipe (or the trainer config when there is no recipe column), the protocol and its grid. The
seeds of one setting on one task are what a cell averages; runs of different settings are never
averaged together.

The setting key is made from the CSV's own columns, tolerating files that lack the newer ones:

* ``adapter_options`` (JSON), without the options a task fills in (a ``${task.…}`` value in
  ``configs/adapter/<adapter>.yaml``, e.g. PVeRA's ``beta``) and without the options a grid chose
  (``grid_scores``): those differ between tasks or seeds of one setting;
* ``recipe`` and ``trainer`` (JSON) when present, the trainer without the grid's keys;
* the grid itself (the keys and values of ``grid_scores``' points).

The CSV's ``setting`` column (a hash that includes the task) is not needed; when present, a cell
whose runs carry several of its values is reported. ``versions`` (JSON: the package version, and
``pvera-bench-commit`` / ``pvera-bench-dirty`` when it ran from a git checkout) gives each run's
code identity; cells that mix code identities are reported with the identities they mix.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import sys
from functools import lru_cache
from pathlib import Path

import pandas as pd

from .. import tasks as _tasks
from ..results import describe_torn, without_torn

BASE_COLUMNS = ("task", "adapter", "backbone", "protocol", "seed", "params_adapter", "status")
OPTIONAL_COLUMNS = ("adapter_options", "recipe", "trainer", "setting", "versions", "config_hash", "grid_scores",
                    "run_dir", "calibration")
KEY = ("setting", "task", "seed")


class ReportError(Exception):
    """A problem with the input that ends the command with one message and exit code 2."""


def warn(msg: str) -> None:
    print(msg, file=sys.stderr)


def norm_seed(value: str) -> str:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return value
    return str(int(f)) if math.isfinite(f) and f.is_integer() else value


def parse_filters(values: list[str] | None) -> set[str] | None:
    if not values:
        return None
    out = {v.strip() for item in values for v in item.split(",") if v.strip()}
    return out or None


def _json(text: str) -> object:
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text.strip()


@lru_cache(maxsize=None)
def task_filled_options(adapter: str) -> frozenset[str]:
    """The options of ``configs/adapter/<adapter>.yaml`` whose value comes from the task table."""
    from omegaconf import OmegaConf

    from ..paths import config_dir

    path = config_dir() / "adapter" / f"{adapter}.yaml"
    if not path.is_file():
        return frozenset()
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return frozenset(k for k, v in raw.items() if isinstance(v, str) and "${task." in v)


def grid_of(grid_scores: str) -> dict[str, list]:
    """``{dotted key: sorted values}`` of the candidates in a ``grid_scores`` cell (``{}`` without a grid)."""
    scores = _json(grid_scores)
    grid: dict[str, set] = {}
    if isinstance(scores, list):
        for s in scores:
            point = s.get("point") if isinstance(s, dict) else None
            for k, v in (point or {}).items():
                grid.setdefault(k, set()).add(json.dumps(v, sort_keys=True))
    return {k: sorted((json.loads(v) for v in vs), key=lambda x: json.dumps(x)) for k, vs in sorted(grid.items())}


def setting_of(row: pd.Series) -> dict:
    """The setting of one run (a JSON-able dict); see the module docstring."""
    grid = grid_of(row.get("grid_scores", ""))
    opts = _json(row.get("adapter_options", ""))
    opts = dict(opts) if isinstance(opts, dict) else ({} if opts is None else {"options": opts})
    for k in task_filled_options(row["adapter"]) | {g.split(".", 1)[1] for g in grid if g.startswith("adapter.")}:
        opts.pop(k, None)
    opts.pop("name", None)
    if row.get("calibration") not in (None, "", "none"):  # post-hoc calibration: another setting (evaluate.py)
        opts["calibration"] = row["calibration"]
    trainer = _json(row.get("trainer", ""))
    if isinstance(trainer, dict):
        trainer = {k: v for k, v in trainer.items() if f"trainer.{k}" not in grid}
    return dict(adapter=row["adapter"], options=opts, backbone=row["backbone"], recipe=row.get("recipe") or "",
                trainer=trainer if trainer else {}, protocol=row["protocol"], grid=grid)


def setting_id(setting: dict) -> str:
    return hashlib.sha1(json.dumps(setting, sort_keys=True, default=str).encode()).hexdigest()[:12]


def code_identity(versions: str) -> str:
    """The code identity of a ``versions`` cell as runs write it (``results.code_identity``: the
    package version, ``+g<commit>`` and ``.dirty`` from ``pvera-bench-commit`` / ``pvera-bench-dirty``)."""
    from ..results import code_identity as identity

    return identity(versions)


def load_runs(path: str | Path, metric_col: str = "test_acc", filters: dict[str, set[str] | None] | None = None,
              need_run_dir: bool = False) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The successful runs of the results CSV, filtered, grouped by setting and de-duplicated.

    Returns ``(runs, settings)``: ``runs`` has ``setting`` (an id), ``adapter, backbone, protocol,
    recipe, task, seed`` (strings), ``value`` (the metric), ``params`` (``params_adapter``),
    ``code`` (code identity), ``line`` (the CSV line) and ``run_dir``; ``settings`` maps each id to
    its setting dict. Raises :class:`ReportError` for an unusable file.
    """
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"results file not found: {path}")
    try:
        text, torn = without_torn(path)  # a torn line (a write cut short) is set aside, never a row
        df = pd.read_csv(io.StringIO(text), dtype=str, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise ReportError(f"{path}: the file is empty (no header line)") from None
    except pd.errors.ParserError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ReportError(f"{path}: malformed CSV: {first}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ReportError(f"{path}: unreadable CSV: {e}") from None

    for line, rec in torn:
        warn(f"{path}: {describe_torn(line, rec)}")
    df.columns = [str(c).strip() for c in df.columns]
    required = list(BASE_COLUMNS) + [metric_col] + (["run_dir"] if need_run_dir else [])
    missing = [c for c in dict.fromkeys(required) if c not in df.columns]
    if missing:
        raise ReportError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(the report needs {', '.join(dict.fromkeys(required))})"
        )
    df = df[list(dict.fromkeys(required + [c for c in OPTIONAL_COLUMNS if c in df.columns]))].copy()
    df["line"] = df.index + 2  # line 1 is the header; blank lines are kept as empty rows
    df = df.dropna(how="all", subset=list(dict.fromkeys(required)))
    for col in OPTIONAL_COLUMNS:
        df[col] = df[col].fillna("").str.strip() if col in df.columns else ""
    for col in ("task", "adapter", "backbone", "protocol", "seed", "status"):
        df[col] = df[col].fillna("").str.strip()
    df["seed"] = df["seed"].map(norm_seed)

    for col, dest in ((metric_col, "value"), ("params_adapter", "params")):
        raw = df[col].str.strip()
        num = pd.to_numeric(raw, errors="coerce")
        bad = raw.notna() & (raw != "") & num.isna()
        if bad.any():
            i = bad.idxmax()
            raise ReportError(f"{path} line {df.at[i, 'line']}: column {col} is not a number: {df.at[i, col]!r}")
        df[dest] = num.astype(float)

    for col in ("task", "adapter"):
        empty = df[col] == ""
        if empty.any():
            raise ReportError(f"{path} line {df.loc[empty, 'line'].iloc[0]}: empty {col}")

    for col, allowed in (filters or {}).items():
        if allowed:
            keep = df[col].isin(allowed)
            if not keep.any():
                have = sorted(set(df[col]) - {""})
                raise ReportError(f"--{col} {','.join(sorted(allowed))} matches no run in {path}; "
                                  f"it has {col} {', '.join(have) if have else '(none)'}")
            df = df[keep]

    ok = df["status"].str.lower() == "ok"
    n_failed = int((~ok).sum())
    if n_failed:
        warn(f"excluded {n_failed} failed run{'s' if n_failed != 1 else ''} (status != ok)")
    df = df[ok]

    no_value = df["value"].isna()
    if no_value.any():
        n = int(no_value.sum())
        warn(f"skipped {n} ok run{'s' if n != 1 else ''} without a {metric_col} value")
        df = df[~no_value]

    settings: dict[str, dict] = {}
    ids = []
    for _, r in df.iterrows():
        s = setting_of(r)
        sid = setting_id(s)
        settings.setdefault(sid, s)
        ids.append(sid)
    df = df.rename(columns={"setting": "csv_setting"})
    df["setting"] = ids
    df["code"] = df["versions"].map(code_identity)

    dups = df.duplicated(subset=list(KEY), keep="last")
    if dups.any():
        n = int(dups.sum())
        warn(f"{n} run{'s' if n != 1 else ''} repeated (same setting/task/seed): kept the last line of each")
        has_hash = (df["config_hash"] != "").any()
        if has_hash:
            mixed = int((df.groupby(list(KEY))["config_hash"].nunique() > 1).sum())
            if mixed:
                warn(f"{mixed} of those cells hold runs of different settings (config_hash differs in something "
                     f"the CSV's other columns do not show); only the last counts. Select one setting by "
                     f"filtering the CSV first")
        df = df[~dups]

    mixed = df[df["csv_setting"] != ""].groupby(["setting", "task"])["csv_setting"].nunique()
    for (sid, task), n in mixed[mixed > 1].items():
        warn(f"{settings[sid]['adapter']} / {task}: the seeds carry {n} different `setting` values in the CSV "
             f"(something outside adapter, options, backbone, recipe, trainer and protocol differs, e.g. the data "
             f"source); check with `pvera-bench results check`")

    runs = df[["setting", "adapter", "backbone", "protocol", "recipe", "task", "seed", "value", "params", "code",
               "line", "run_dir"]].reset_index(drop=True)
    settings = {k: v for k, v in settings.items() if k in set(runs["setting"])}
    return runs, settings


def task_columns(runs: pd.DataFrame, all_tasks: bool = False) -> tuple[list[str], list[str]]:
    """(the VTAB tasks in benchmark order, the other tasks, sorted): those with results, or all
    19 VTAB tasks with ``all_tasks``."""
    try:
        vtab = list(_tasks.vtab_tasks())
    except FileNotFoundError as e:  # no configs/: a broken install
        raise ReportError(str(e)) from None
    present = set(runs["task"])
    extra = sorted(present - set(vtab))
    return (vtab if all_tasks else [t for t in vtab if t in present]), extra


# ---------------------------------------------------------------------------------------------
# labels


def _fmt_value(v) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _differences(group: list[dict]) -> list[tuple[str, str]]:
    """The (field, key) pairs whose values differ between the settings of ``group``."""
    out = []
    for field in ("options", "trainer"):
        keys = sorted(set().union(*(s[field] for s in group)) if all(isinstance(s[field], dict) for s in group)
                      else set())
        out += [(field, k) for k in keys if len({json.dumps(s[field].get(k), sort_keys=True) for s in group}) > 1]
    for field in ("recipe", "grid"):
        if len({json.dumps(s[field], sort_keys=True) for s in group}) > 1:
            out.append((field, ""))
    return out


def labels(settings: dict[str, dict], shown: tuple[str, ...] = ("backbone", "protocol")) -> dict[str, str]:
    """A readable label per setting id: the adapter name, and, when several settings share it
    (with the same ``shown`` columns), what differs between them: ``lora (r=16)``."""
    by_name: dict[tuple, list[str]] = {}
    for sid, s in settings.items():
        by_name.setdefault((s["adapter"],) + tuple(s[k] for k in shown), []).append(sid)
    out = {}
    for (name, *_), ids in by_name.items():
        if len(ids) == 1:
            out[ids[0]] = name
            continue
        diffs = _differences([settings[i] for i in ids])
        for sid in ids:
            s, parts = settings[sid], []
            for field, k in diffs:
                if field == "grid":
                    parts.append("grid " + (",".join(f"{g}∈{_fmt_value(v)}" for g, v in s["grid"].items()) or "none"))
                elif field == "recipe":
                    parts.append(f"recipe={s['recipe'] or '-'}")
                else:
                    v = s[field].get(k) if isinstance(s[field], dict) else None
                    if v is not None:  # absent: a grid key of this setting (its grid says so) or not recorded
                        parts.append(f"{k}={_fmt_value(v)}")
            out[sid] = f"{name} ({', '.join(parts)})" if parts else f"{name} [{sid[:6]}]"
    return out
