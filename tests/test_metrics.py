import math

import numpy as np
import pytest
import torch

from pvera_bench import metrics


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_accuracy_percent_and_inputs():
    probs = t([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = torch.tensor([0, 1, 1, 1])
    assert metrics.accuracy(probs, labels) == pytest.approx(75.0)
    # numpy inputs and float labels holding integers work too
    assert metrics.accuracy(probs.numpy(), np.array([0.0, 1.0, 1.0, 1.0])) == pytest.approx(75.0)
    with pytest.raises(ValueError):
        metrics.accuracy(probs, torch.tensor([0, 1, 2, 1]))  # label out of range
    with pytest.raises(ValueError):
        metrics.accuracy(probs, torch.tensor([0, 1]))  # wrong length


def test_nll_by_hand():
    probs = t([[0.5, 0.5], [0.8, 0.2], [0.1, 0.9]])
    labels = torch.tensor([0, 1, 1])
    expected = -(math.log(0.5) + math.log(0.2) + math.log(0.9)) / 3
    assert metrics.nll(probs, labels) == pytest.approx(expected, rel=1e-6)
    # a zero probability on the true class is clamped, not infinite
    v = metrics.nll(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    assert v == pytest.approx(-math.log(metrics.EPS))


def test_brier_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    # (0.09 + 0.04 + 0.01 = 0.14) and (0.04 + 0.25 + 0.49 = 0.78) -> mean 0.46
    assert metrics.brier(probs, labels) == pytest.approx(0.46)
    assert metrics.brier(torch.eye(3), torch.arange(3)) == pytest.approx(0.0)


def test_ece_perfectly_calibrated_is_zero():
    # 4 examples at confidence 0.75, 3 of them right; 2 at confidence 1.0, both right
    probs = t([[0.75, 0.25]] * 4 + [[0.0, 1.0]] * 2)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    assert metrics.ece(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_overconfident_by_hand():
    # group A: confidence 0.95, 2 of 4 right -> gap 0.45, weight 4/10
    # group B: confidence 0.70 (class 1 predicted), 4 of 6 right -> gap 0.70 - 2/3, weight 6/10
    probs = t([[0.95, 0.05]] * 4 + [[0.3, 0.7]] * 6)
    labels = torch.tensor([0, 0, 1, 1] + [1, 1, 1, 1, 0, 0])
    expected = 0.4 * 0.45 + 0.6 * (0.7 - 2 / 3)  # = 0.2
    assert expected == pytest.approx(0.2)
    assert metrics.ece(probs, labels) == pytest.approx(expected, abs=1e-6)
    bins = metrics.reliability_bins(probs, labels, 15)
    assert bins.counts.sum() == 10
    assert bins.counts[14] == 4  # 0.95 in (14/15, 1]
    assert bins.counts[10] == 6  # 0.70 in (10/15, 11/15]
    assert bins.accuracy[14] == pytest.approx(0.5)
    assert bins.confidence[10] == pytest.approx(0.7)
    assert np.isnan(bins.accuracy[0]) and np.isnan(bins.confidence[0])  # empty bin
    assert len(bins.edges) == 16 and bins.edges[0] == 0.0 and bins.edges[-1] == 1.0


def test_bin_edge_convention():
    # 4 bins with edges 0, .25, .5, .75, 1: bins are [0, .25], (.25, .5], (.5, .75], (.75, 1]
    probs = torch.tensor([[0.0, 0.0], [0.5, 0.5], [0.75, 0.25], [1.0, 0.0], [0.8, 0.2]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 0, 0])
    bins = metrics.reliability_bins(probs, labels, 4)
    assert bins.counts.tolist() == [1, 1, 1, 2]


def test_predictive_entropy_and_ood_scores():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    h = metrics.predictive_entropy(probs)
    assert h.shape == (2,)
    assert h.tolist() == pytest.approx([0.0, math.log(2)])
    assert metrics.mean_predictive_entropy(probs) == pytest.approx(math.log(2) / 2)
    s = metrics.ood_scores(probs)
    assert s["msp"].tolist() == pytest.approx([1.0, 0.5])
    assert s["entropy"].tolist() == pytest.approx([0.0, -math.log(2)])


def test_auroc_counts_ordered_pairs():
    s_in = torch.tensor([0.9, 0.8, 0.3])
    s_out = torch.tensor([0.7, 0.2])
    # correctly ordered (in > out) pairs: 0.9 (2) + 0.8 (2) + 0.3 (1) = 5 of 6
    assert metrics.auroc(s_in, s_out) == pytest.approx(5 / 6)
    # a tie counts one half: pairs (0.5 vs 0.5) = 0.5, (0.5 vs 0.1) = 1 -> 1.5 / 2
    assert metrics.auroc([0.5], [0.5, 0.1]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        metrics.auroc([0.5], [])


def test_mc_accuracy_interval():
    # 5 samples on 4 examples with accuracies 0, 25, 50, 75, 100 percent
    labels = torch.tensor([0, 0, 0, 0])
    right, wrong = [1.0, 0.0], [0.0, 1.0]
    sample_probs = torch.tensor(
        [[right if i < n_right else wrong for i in range(4)] for n_right in range(5)], dtype=torch.float64
    )
    assert metrics.mc_sample_accuracies(sample_probs, labels).tolist() == [0.0, 25.0, 50.0, 75.0, 100.0]
    assert metrics.mc_sample_accuracies(sample_probs.argmax(-1), labels).tolist() == [0.0, 25.0, 50.0, 75.0, 100.0]
    low, high = metrics.mc_accuracy_interval(sample_probs, labels)
    # linear interpolation: positions 0.1 and 3.9 of 4 -> 2.5 and 97.5
    assert (low, high) == pytest.approx((2.5, 97.5))
    assert (low, high) == pytest.approx(tuple(np.percentile([0, 25, 50, 75, 100], [2.5, 97.5])))


def test_summarize_keys_and_values():
    probs = t([[0.9, 0.1], [0.2, 0.8]])
    labels = torch.tensor([0, 0])
    out = metrics.summarize(probs, labels)
    assert set(out) == {"test_acc", "test_nll", "test_ece", "test_brier"}
    assert out["test_acc"] == pytest.approx(50.0)
    assert out["test_nll"] == pytest.approx(-(math.log(0.9) + math.log(0.2)) / 2, rel=1e-6)
    # bins: 0.9 right (gap 0.1), 0.8 wrong (gap 0.8) -> (0.1 + 0.8) / 2
    assert out["test_ece"] == pytest.approx(0.45, abs=1e-6)
    assert out["test_brier"] == pytest.approx((0.02 + 1.28) / 2, abs=1e-6)

    sample_probs = torch.stack([torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]])])
    out = metrics.summarize(sample_probs.mean(0), labels, samples=sample_probs)
    assert set(out) == {"test_acc", "test_nll", "test_ece", "test_brier", "mc_samples", "mc_entropy", "mc_acc_low",
                        "mc_acc_high"}
    assert out["mc_samples"] == 2
    assert out["mc_entropy"] == pytest.approx(math.log(2))  # the average is uniform
    assert out["mc_acc_low"] == pytest.approx(2.5)  # percentiles of [0, 100]
    assert out["mc_acc_high"] == pytest.approx(97.5)
    assert all(isinstance(v, float) for k, v in out.items() if k != "mc_samples")
    # the evaluator keeps only each sample's top-1 predictions: same interval
    preds = sample_probs.argmax(-1)
    assert metrics.summarize(sample_probs.mean(0), labels, samples=preds) == out


def test_auroc_takes_the_in_distribution_side_as_positive():
    """Known answers: in-distribution scores first; higher means more in-distribution."""
    assert metrics.auroc([0.9, 0.4], [0.5, 0.1]) == pytest.approx(3 / 4)  # 3 of 4 (in, out) pairs ordered
    assert metrics.auroc([0.5, 0.1], [0.9, 0.4]) == pytest.approx(1 / 4)  # the sides swapped: 1 - 3/4
    confident = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05]])
    flat = torch.full((3, 3), 1 / 3)
    s_in, s_out = metrics.ood_scores(confident), metrics.ood_scores(flat)
    assert metrics.auroc(s_in["msp"], s_out["msp"]) == 1.0  # confident test images read as in-distribution
    assert metrics.auroc(s_in["entropy"], s_out["entropy"]) == 1.0


def test_the_run_scores_its_own_test_split_as_in_distribution():
    """ood.score_ood (what a run and ``evaluate`` call): this run's test predictions are the positive
    side, the other task's the negative; a model confident on its own test images and flat on the
    other task's scores 1.0, not 0.0."""
    import json

    from pvera_bench import ood

    confident = torch.eye(10)[torch.arange(20) % 10] * 0.9 + 0.01
    asked = []

    def flat_on(task):  # the other task's test probabilities
        asked.append(task["name"])
        return torch.full((30, 10), 0.1)

    row = ood.score_ood("demo", "cifar100", flat_on, confident, False)
    assert asked == ["demo"] and row["ood_task"] == "demo" and row["ood_auroc"] == 1.0
    assert json.loads(row["ood_aurocs"]) == {"demo": 1.0}
