"""The Hydra application: config search path and the task function (kept out of cli.py so that
``report`` and ``data`` start without importing torch or Hydra)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .paths import config_dir


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def hydra_main(cfg: DictConfig) -> dict:
    from .schema import ConfigError, validate

    try:  # every option, before torch's model code, timm or any data is imported
        validate(cfg)
    except ConfigError as e:
        print(f"pvera-bench: error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
    from .job import run

    hc = HydraConfig.get()
    return run(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task), hc.mode == RunMode.MULTIRUN)
