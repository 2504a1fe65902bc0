"""benchmarks/stacked_seeds.py (issue 16.2): seeds trained as one stacked model take the steps each seed takes
trained alone by train_classifier (same initialisation, batch order and Adam state per seed): exactly so in
float64; in float32 the grouped convolution's rounding is all that differs. A failing worker of the
one-process-per-seed timing ends it with an error instead of a wait."""

import time

import pytest
import torch

from benchmarks.stacked_seeds import concurrent_seconds, seeded_lenets, train_stacked
from harness.models.lenet import lenet_for_size
from harness.models.training import TrainConfig, train_classifier

CPU = torch.device("cpu")
LR = lenet_for_size(1268).lr


def _gap(a, b) -> float:
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def _data(mnist, n=3000):
    return torch.from_numpy(mnist.train_x[:n]), torch.from_numpy(mnist.train_y[:n])


def test_stacked_training_is_each_seeds_own_training_in_float64(mnist):
    x, y = _data(mnist)
    seeds = [3, 7, 11]
    alone = [m.double() for m in seeded_lenets(1268, seeds, mnist, CPU)]
    for model, seed in zip(alone, seeds, strict=True):  # 2 epochs of 12 batches, the last one of 250 too
        train_classifier(model, x, y, TrainConfig(LR, 250, 2, seed), prepare=lambda im, m=model: m.standardise(im).double())
    stacked = [m.double() for m in seeded_lenets(1268, seeds, mnist, CPU)]
    train_stacked(stacked, x, y, LR, 250, 2, seeds, prepare=lambda im: stacked[0].standardise(im).double())
    start = [m.double() for m in seeded_lenets(1268, seeds, mnist, CPU)]
    for a, b, s in zip(alone, stacked, start, strict=True):
        assert _gap(a, s) > 1e-3  # training moved the weights ...
        assert _gap(a, b) < 1e-10  # ... and both ways moved them to the same place


def test_stacked_seeds_follow_their_own_batch_order(mnist):
    x, y = _data(mnist, 2900)  # a last batch of 150
    alone = seeded_lenets(1268, [3, 7], mnist, CPU)
    for model, seed in zip(alone, [3, 7], strict=True):
        train_classifier(model, x, y, TrainConfig(LR, 250, 1, seed), prepare=model.standardise)
    stacked = seeded_lenets(1268, [3, 7], mnist, CPU)
    train_stacked(stacked, x, y, LR, 250, 1, [3, 7])
    assert _gap(alone[1], stacked[1]) < 1e-5  # float32: the rounding of a grouped convolution
    swapped = seeded_lenets(1268, [3, 7], mnist, CPU)
    train_stacked(swapped, x, y, LR, 250, 1, [7, 3])  # each seed given the other's batch order
    assert _gap(alone[1], swapped[1]) > 1e-3


def test_a_failing_worker_ends_the_process_timing_with_an_error():
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="a training worker of LeNet-280 failed"):
        concurrent_seconds(280, [0, 1], 1, torch.device("cuda:7"), repeats=1)  # no such device here
    assert time.perf_counter() - start < 120
