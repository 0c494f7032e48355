"""Full fine-tuning's declaration; the function is pvera_bench/adapters/full.py."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Adapter, declare


@dataclass(frozen=True)
class FullOptions:
    pass


declare(Adapter("full", FullOptions, apply="pvera_bench.adapters.full:apply",
                help="full fine-tuning: every backbone weight trains",
                no_peft_form="full has no PEFT form: every backbone weight trains, so there is no adapter to write; "
                             "save the whole model's state_dict instead (the run's weights hold every trained tensor)"))
