"""FacT-TT and FacT-TK (Jie & Deng, "FacT: Factor-Tuning for Lightweight Adaptation on Vision
Transformer", AAAI 2023; code: JieShibo/PETL-ViT, folder FacT/) as pvera-bench adapters.

This module is what the entry point names: it declares the two adapters (torch-free, so that
``pvera-bench adapter=fact_tt adapter.r=0`` is refused before torch loads) and adds this package's
configs (``adapter/fact_tt.yaml``, ``recipe/fact.yaml``...) and published references. The layers
are in :mod:`pvera_bench_fact.layers`, imported when a model is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pvera_bench.registry import Adapter, add_configs, add_references, declare, option

NO_PEFT = ("has no PEFT form: PEFT has no tensorised (Tensor-Train or Tucker) factor tuner; its trained factors "
           "stay in the run directory")


@dataclass(frozen=True)
class FactTTOptions:
    r: int = option(8, ge=1, help="rank of the factors (the source's --dim; configs/tt/cifar.yaml: rank 8)")
    scale: float = option(1.0, gt=0, help="the update is scaled by s (the source's --scale; configs/tt/cifar.yaml: 1.0)")
    dropout: float = option(0.1, ge=0, lt=1, help="dropout on the core's output, in training (fact_tt.py: nn.Dropout(0.1))")


@dataclass(frozen=True)
class FactTKOptions:
    r: int = option(32, ge=1, help="rank of the factors (the source's --dim; configs/tk/cifar.yaml: rank 32)")
    scale: float = option(0.1, gt=0, help="the update is scaled by s (the source's --scale; configs/tk/cifar.yaml: 0.1)")
    dropout: float = option(0.1, ge=0, lt=1, help="dropout on the core's output, in training (fact_tk.py: nn.Dropout(0.1))")


declare(Adapter("fact_tt", FactTTOptions, apply="pvera_bench_fact.layers:apply_tt",
                help="FacT-TT (Jie & Deng 2023): Tensor-Train factors of every q, k, v, o, fc1, fc2 update",
                no_peft_form=f"fact_tt {NO_PEFT}"))
declare(Adapter("fact_tk", FactTKOptions, apply="pvera_bench_fact.layers:apply_tk",
                help="FacT-TK (Jie & Deng 2023): Tucker factors of every q, k, v, o, fc1, fc2 update",
                no_peft_form=f"fact_tk {NO_PEFT}"))
add_configs(Path(__file__).parent / "configs")
add_references(Path(__file__).parent / "references")
