"""Size of adapter.safetensors per adapter on ViT-B/16 shapes (random weights: sizes only depend on
shapes), with each adapter's default options and a 100-class head (cifar100), and the time of a
save and a load (rebuild, digests, tensors).

    PYTHONPATH=. python scripts/artifact_sizes.py
"""

from __future__ import annotations

import sys
import tempfile
import time

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pvera_bench import adapters, artifacts
from pvera_bench.assemble import build_model
from pvera_bench.paths import config_dir


def main() -> None:
    print(f"{'adapter':<12} {'adapter params':>14} {'head params':>11} {'file':>10} {'file w/o head':>13} "
          f"{'save s':>7} {'load s':>7}")
    for name in adapters.available():
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("config", overrides=[f"adapter={name}", "task=cifar100", "backbone=vit_b16",
                                               "backbone.pretrained=false"])
        c = OmegaConf.to_container(cfg, resolve=True)
        model = build_model(c)
        head = sum(p.numel() for p in model.head.parameters())
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            path = artifacts.save(d, model, c, candidate=0, chosen={}, train_key={}, config_hash="", versions="{}")
            t_save = time.perf_counter() - t0
            size = path.stat().st_size
            t0 = time.perf_counter()
            artifacts.load_run(d)
            t_load = time.perf_counter() - t0
        print(f"{name:<12} {adapters.count_trainable(model.backbone):>14,} {head:>11,} {size / 1024:>8.1f} kB "
              f"{(size - 4 * head) / 1024:>10.1f} kB {t_save:>7.2f} {t_load:>7.2f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
