"""Out-of-distribution detection against one or many other tasks (the OOD matrix).

``ood_task`` is a task name, a list of names, or a group (``vtab``, ``natural``, ``specialized``,
``structured``), also as a comma list (``ood_task=natural,demo``). Each model is scored against the
test split of every named task except its own (a single name is taken as given): the AUROC of
telling its own test images (positive) from that task's by the max softmax probability and, when
the model samples (PVeRA ``inference=mc``), by the predictive entropy.

Row columns: ``ood_task`` (the names, comma-joined), ``ood_aurocs`` / ``ood_aurocs_entropy`` (JSON
``{task: AUROC}``) and ``ood_auroc`` / ``ood_auroc_entropy``: the AUROC for a single task, the mean
over the tasks for several.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

from . import metrics, tasks
from .data import DataError


def ood_names(value: Any, own: str) -> list[str]:
    """The OOD task names ``value`` asks for, with the model's own task left out of groups and lists."""
    if value is None or value == "" or value == []:
        return []
    words = [str(value)] if isinstance(value, str) else [str(v) for v in value]
    names: list[str] = []
    for w in words:
        names += [n for n in tasks.expand(w) if n not in names]
    table = tasks.task_configs()
    unknown = [n for n in names if n not in table]
    if unknown:
        raise DataError(f"unknown ood_task {', '.join(map(repr, unknown))}; valid: a task name, a list of them, or a "
                        f"group (vtab, {', '.join(tasks.GROUPS)}); task names: {', '.join(sorted(table))}")
    single = len(words) == 1 and "," not in words[0] and words[0] not in ("vtab", *tasks.GROUPS)
    return names if single else [n for n in names if n != own]


def ood_configs(value: Any, own: str) -> list[dict]:
    table = tasks.task_configs()
    return [table[n] for n in ood_names(value, own)]


def ood_columns(in_probs, sampled: bool, others: Mapping[str, Any]) -> dict[str, Any]:
    """The row's OOD columns from this model's test probabilities and ``{task: its test probabilities}``."""
    if not others:
        return {}
    s_in = metrics.ood_scores(in_probs)
    msp, ent = {}, {}
    for name, probs in others.items():
        s_out = metrics.ood_scores(probs)
        msp[name] = metrics.auroc(s_in["msp"], s_out["msp"])
        if sampled:
            ent[name] = metrics.auroc(s_in["entropy"], s_out["entropy"])
    row: dict[str, Any] = dict(ood_task=",".join(others), ood_auroc=sum(msp.values()) / len(msp),
                               ood_aurocs=json.dumps(msp, sort_keys=True))
    if sampled:
        row.update(ood_auroc_entropy=sum(ent.values()) / len(ent), ood_aurocs_entropy=json.dumps(ent, sort_keys=True))
    return row


def score_ood(value: Any, own: str, predict: Callable[[dict], Any], in_probs, sampled: bool) -> dict[str, Any]:
    """Predict every OOD task's test split (``predict(task_config) -> probs``) and return the columns."""
    return ood_columns(in_probs, sampled, {c["name"]: predict(c) for c in ood_configs(value, own)})
