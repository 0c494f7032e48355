"""``draws: pvera_code`` (recipe=pvera_paper_exact): grid candidate j's frozen projections,
``lambda_d`` and A matrices are the PVeRA code's j-th draws, bit for bit, and its head the j-th head
drawn after the backbone. The references below follow the code's own loops (leofillioux/pvera
models/models.py add_adapter, models/adapters/{vera,lora}.py, linear_probe.py), with the global RNGs
as the code uses them."""

import numpy as np
import pytest
import torch
from torch import nn

from pvera_bench import adapters
from pvera_bench.adapters import AdapterOptionError
from pvera_bench.backbones import Classifier

from conftest import tiny_vit

SEED, D, DEPTH = 7, 32, 3


def code_vera(rank: int, latent: int, n: int, seed: int = SEED):
    """models.py vera / pvera branch: ``local_seed(seed)`` around kaiming_uniform_ of every candidate's
    q_down, v_down, q_up, v_up; then per block and candidate ``np.random.uniform(1e-5, 1)`` for qd, vd
    (numpy seeded once by utils/seed.py seed_everything)."""
    np.random.seed(seed)
    q_down = [torch.empty(D, rank * latent) for _ in range(n)]
    v_down = [torch.empty(D, rank * latent) for _ in range(n)]
    q_up = [torch.empty(rank, D) for _ in range(n)]
    v_up = [torch.empty(rank, D) for _ in range(n)]
    torch.manual_seed(seed)
    for qd, vd, qu, vu in zip(q_down, v_down, q_up, v_up):
        nn.init.kaiming_uniform_(qd)
        nn.init.kaiming_uniform_(vd)
        nn.init.kaiming_uniform_(qu)
        nn.init.kaiming_uniform_(vu)
    lam = [[(torch.ones(rank * latent) * np.random.uniform(1e-5, 1), torch.ones(rank * latent) * np.random.uniform(1e-5, 1))
            for _ in range(n)] for _ in range(DEPTH)]
    return q_down, v_down, q_up, v_up, lam


@pytest.mark.parametrize("name,latent", [("vera", 1), ("pvera", 2)])
def test_vera_candidates_get_the_codes_jth_draws(name, latent):
    r, n = 4, 3
    qd, vd, qu, vu, lam = code_vera(r, latent, n)
    options = tuple({"r": r} for _ in range(n))
    first = None
    for j in range(n):
        vit = tiny_vit(depth=DEPTH)
        torch.manual_seed(123)  # the global RNG plays no part
        with adapters.building(adapters.GridDraw(j, options, SEED)):
            adapters.apply(vit, name, r=r, draws="pvera_code")
        shared = getattr(vit, f"{name}_shared")
        assert torch.equal(shared.A, torch.cat((qd[j], vd[j]), dim=1))
        assert torch.equal(shared.B, torch.stack((qu[j], vu[j])))
        for b, blk in enumerate(vit.blocks):
            assert torch.equal(blk.attn.qkv.lambda_d.detach(), torch.cat(lam[b][j]))
        first = shared.A if first is None else first
    assert not torch.equal(first, shared.A)  # the candidates' draws differ


def test_lora_candidates_get_the_codes_jth_draws_in_every_block():
    ranks = [2, 4, 8]
    options = tuple({"r": k} for k in ranks)
    for j, r in enumerate(ranks):
        vit = tiny_vit(depth=DEPTH)
        with adapters.building(adapters.GridDraw(j, options, SEED)):
            adapters.apply(vit, "lora", r=r, alpha=16.0, init="pvera_code", draws="pvera_code")
        for blk in vit.blocks:
            torch.manual_seed(SEED)  # models.py: local_seed(self.seed) around each block's GridSearchLoRA
            heads = []
            for k in ranks:  # models/adapters/lora.py LoRA.__init__: Q_down, Q_up (zeros), V_down
                std = 1 / torch.sqrt(torch.tensor(k).float())
                heads.append((torch.randn(D, k) * std, torch.randn(D, k) * std))
            m = blk.attn.qkv
            assert torch.equal(m.lora_A.detach(), torch.cat(heads[j], dim=1)) and not m.lora_B.any()


def test_head_is_the_jth_drawn_after_the_backbone():
    torch.manual_seed(SEED)
    vit = tiny_vit()
    state = torch.get_rng_state()
    heads = nn.ModuleList([nn.Linear(D, 5) for _ in range(3)])  # linear_probe.py GridSearchLinearProbe
    for j in range(3):
        torch.set_rng_state(state)
        c = Classifier(vit, 5, head_draw=j)
        assert torch.equal(c.head.weight, heads[j].weight) and torch.equal(c.head.bias, heads[j].bias)


def test_code_draws_need_the_codes_init():
    with pytest.raises(AdapterOptionError, match="draws=pvera_code"):
        adapters.apply(tiny_vit(), "vera", r=4, draws="pvera_code", init="peft")
    with pytest.raises(AdapterOptionError, match="draws=pvera_code"):
        adapters.apply(tiny_vit(), "lora", r=4, draws="pvera_code")
