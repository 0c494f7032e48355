"""A PEFT export scored with PEFT and timm only, against the run's own test predictions.

    python scripts/check_peft_export.py RUN_DIR PEFT_DIR

The model is what a PEFT user builds from the export alone: the code of its model card
(``PEFT_DIR/README.md``), run as written (timm's ViT from the export's ``backbone/`` folder, from the
hub id, or drawn from the recorded seed; then ``peft.PeftModel.from_pretrained``). No pvera-bench
model code is used; pvera-bench only reads the run's test split (the same uint8 images, resized as
the run resized them) and its ``predictions.npz``. Prints the largest difference of the predicted
probabilities and both accuracies; exits 1 when they differ by more than 1e-4.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf


def card_model(export_dir: Path) -> dict:
    """The namespace of the model card's code (``model``, ``logits``) with ``export_dir`` filled in."""
    card = (export_dir / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace('export_dir = "."', f"export_dir = {str(export_dir)!r}")
    ns: dict = {}
    exec(compile(code, str(export_dir / "README.md"), "exec"), ns)  # noqa: S102 - the export's own code
    return ns


def main(run_dir: str, export_dir: str) -> int:
    from pvera_bench.data import load_split

    run, out = Path(run_dir), Path(export_dir).resolve()
    if not (out / "README.md").is_file():
        sys.exit(f"check_peft_export: {out} has no README.md (an export of an older pvera-bench); export it again")
    ns = card_model(out)
    info = json.loads((out / "pvera_bench_export.json").read_text())
    cfg = OmegaConf.load(run / "config.yaml")
    split = load_split(OmegaConf.to_container(cfg.task, resolve=True), "test", source=cfg.data.get("source", "tfds"),
                       data_dir=cfg.data.get("dir"), img_size=info["img_size"][0], resize=info["resize"])
    probs = []
    with torch.no_grad():
        for i in range(0, len(split.labels), 128):
            probs.append(ns["logits"](torch.from_numpy(np.ascontiguousarray(split.images[i:i + 128]))).softmax(-1))
    p = torch.cat(probs).numpy()
    ref = np.load(run / "predictions.npz")
    if not np.array_equal(ref["labels"], split.labels):
        sys.exit("check_peft_export: the test split is not the one the run scored")
    acc = lambda q: 100.0 * float((q.argmax(1) == ref["labels"]).mean())  # noqa: E731
    diff = float(np.abs(p - ref["probs"]).max())
    print(f"{len(p)} test images: max |p_peft - p_run| = {diff:.2e}; test_acc PEFT {acc(p):.2f}, "
          f"run {acc(ref['probs']):.2f}")
    return 0 if diff <= 1e-4 else 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.splitlines()[2].strip())
    sys.exit(main(*sys.argv[1:3]))
