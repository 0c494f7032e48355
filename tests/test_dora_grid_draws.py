"""DoRA under recipe=pvera_paper_exact draws its A as the PVeRA code: after the backbone and every grid
candidate's head, interleaved over the grid block by block (leofillioux/pvera models/models.py ~56 heads,
~154-157 GridSearchDoRA without local_seed; models/adapters/dora.py ~21-24), written out below from the
code's loops with the global RNG as the code uses it."""

import copy

import torch
from torch import nn

from pvera_bench import adapters
from pvera_bench.backbones import rng_after_heads

from conftest import tiny_vit

CODE = dict(norm_axis="column", detach_norm=False, train_magnitude=False, scaling="one", init="pvera_code")
RANKS, D, DEPTH, CLASSES, SEED = (2, 4, 8), 32, 3, 5, 7


def code_a():
    """seed_everything(seed); hub backbone; GridSearchLinearProbe (one Linear per candidate); then per
    block GridSearchDoRA: for each candidate randn(in_dim, rank) / sqrt(rank) for q, then v."""
    torch.manual_seed(SEED)
    tiny_vit(depth=DEPTH)
    for _ in RANKS:
        nn.Linear(D, CLASSES)
    out = [[None] * len(RANKS) for _ in range(DEPTH)]
    for b in range(DEPTH):
        for j, r in enumerate(RANKS):
            std = 1 / torch.sqrt(torch.tensor(r).float())
            out[b][j] = (torch.randn(D, r) * std, torch.randn(D, r) * std)
    return out


def test_every_candidates_a_is_the_codes():
    want = code_a()
    torch.manual_seed(SEED)
    vit = tiny_vit(depth=DEPTH)
    after = rng_after_heads(torch.get_rng_state(), vit.num_features, CLASSES, len(RANKS))
    every = tuple(dict(CODE, r=r) for r in RANKS)
    for j, r in enumerate(RANKS):
        m = copy.deepcopy(vit)
        torch.manual_seed(123)  # the run reseeds before each candidate: the draws must not depend on it
        with adapters.building(adapters.GridDraw(j, every, SEED, after)):
            adapters.apply(m, "dora", r=r, **CODE)
        for b, blk in enumerate(m.blocks):
            a_q, a_v = want[b][j]
            assert torch.equal(blk.attn.qkv.lora_B[0].t(), a_q) and torch.equal(blk.attn.qkv.lora_B[1].t(), a_v), (j, b)


def test_without_the_codes_rng_state_the_global_rng_draws():  # the test above can fail: other draws
    want = code_a()
    torch.manual_seed(SEED)
    m = tiny_vit(depth=DEPTH)
    adapters.apply(m, "dora", r=RANKS[0], **CODE)
    assert not torch.equal(m.blocks[0].attn.qkv.lora_B[0].t(), want[0][0][0])
