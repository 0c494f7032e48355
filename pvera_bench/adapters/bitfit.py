"""BitFit (Ben Zaken et al. 2022): the backbone's bias terms train, every other weight stays frozen.

"Bias" is every parameter named ``bias``: the patch embedding's, each block's LayerNorms',
``attn.qkv``'s, ``attn.proj``'s, ``mlp.fc1``'s and ``mlp.fc2``'s, and the final LayerNorm's.
V-PETL-Bench selects the same tensors (``'bias' in name``: synbol/Parameter-Efficient-Transfer-
Learning-Benchmark ImageClassification/train/train_model_bitfit.py). Nothing is inserted: the
trained biases are the model, so there is nothing to merge. Identity at initialisation.
"""

from __future__ import annotations

from torch import nn



def bias_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias"]


def apply(model: nn.Module) -> None:
    for p in bias_parameters(model):
        p.requires_grad_(True)
