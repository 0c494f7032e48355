"""DoRA in the PVeRA code's form (recipe=pvera_paper_exact): equal, in float64, to the code's forward
rebuilt from its source (leofillioux/pvera models/adapters/dora.py ``DoRA.forward``), with the
code's initial draws and its frozen magnitude."""

import torch
import torch.nn.functional as F

from pvera_bench import adapters

from conftest import tiny_vit

CODE = dict(norm_axis="column", detach_norm=False, train_magnitude=False, scaling="one", init="pvera_code")
R = 4


def code_dora_forward(x, w, b, A_q, B_q, A_v, B_v, mag):
    """pvera models/adapters/dora.py DoRA.forward: column norms (dim 0), no alpha, not detached."""
    wq, wk, wv = w.chunk(3, 0)
    bq, bk, bv = b.chunk(3, -1)
    mag_q, mag_k, mag_v = mag

    def adapted(weight, m):
        return m * (weight / weight.norm(p=2, dim=0, keepdim=True))

    return torch.cat([F.linear(x, adapted(wq + A_q @ B_q, mag_q), bq), F.linear(x, adapted(wk, mag_k), bk),
                      F.linear(x, adapted(wv + A_v @ B_v, mag_v), bv)], dim=-1)


def test_initial_draws_are_the_codes():
    vit = tiny_vit(depth=2)
    torch.manual_seed(3)
    adapters.apply(vit, "dora", r=R, **CODE)
    torch.manual_seed(3)
    for blk in vit.blocks:  # the code: no reseed per block, A_q then A_v from the global RNG
        std = 1 / torch.sqrt(torch.tensor(R).float())
        a_q, a_v = torch.randn(32, R) * std, torch.randn(32, R) * std
        m = blk.attn.qkv
        assert torch.equal(m.lora_B[0].t(), a_q) and torch.equal(m.lora_B[1].t(), a_v)
        assert not m.lora_A.any()
        w = m.base.weight.view(3, 32, 32)
        assert torch.equal(m.magnitude, torch.stack([w[0].norm(p=2, dim=0), w[2].norm(p=2, dim=0)]))
    trainable = {n.split(".")[-1] for n, p in vit.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A", "lora_B"}  # the magnitude is frozen (a buffer)


def test_float64_forward_and_gradient_equal_the_codes():
    torch.manual_seed(0)
    vit = tiny_vit(depth=1)
    adapters.apply(vit, "dora", r=R, **CODE)
    m = vit.blocks[0].attn.qkv.double()
    with torch.no_grad():  # a trained state: both factors non-zero, the magnitude away from ||W||
        m.lora_A.normal_(0, 0.3)
        m.lora_B.normal_(0, 0.3)
        m.magnitude.mul_(1 + 0.1 * torch.rand_like(m.magnitude))
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    ours = m(x)
    # our tensors in the code's names: dW_k = (lora_A_k lora_B_k)^T = A_k B_k
    A = m.lora_A.view(32, 2, R).transpose(0, 1)  # (2, d_in, r)
    A_q, A_v = m.lora_B[0].t(), m.lora_B[1].t()  # the code's A: (d_out, r)
    B_q, B_v = A[0].t(), A[1].t()  # the code's B: (r, d_in)
    w, b = m.base.weight, m.base.bias
    mag = (m.magnitude[0], w.view(3, 32, 32)[1].norm(p=2, dim=0), m.magnitude[1])
    ref = code_dora_forward(x, w, b, A_q, B_q, A_v, B_v, mag)
    assert (ours - ref).abs().max() < 1e-10
    g = torch.randn_like(ours)
    ga = torch.autograd.grad((ours * g).sum(), (m.lora_A, m.lora_B))
    gr = torch.autograd.grad((ref * g).sum(), (m.lora_A, m.lora_B))
    for a, r in zip(ga, gr):  # the gradient goes through the norm (not detached), as in the code
        assert (a - r).abs().max() < 1e-10 and a.abs().max() > 1e-3
    m.detach_norm = True  # a detached norm gives another gradient: the option matters
    gd = torch.autograd.grad((m(x) * g).sum(), m.lora_A)[0]
    assert (gd - ga[0]).abs().max() > 1e-6
    m.detach_norm = False
    ref_merged = m(x)
    m.merge()
    assert (m.eval()(x) - ref_merged).abs().max() < 1e-10
