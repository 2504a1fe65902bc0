"""Issue 16.2, the second way to pack a device: several seeds of one S1 LeNet trained as one stacked model
(`torch.func.stack_module_state` + `vmap` over the seeds' parameters; each seed keeps its own initialisation,
batch order and Adam state), against the same seeds trained by the harness's `train_classifier` one after
another in this process, and at once, one process per seed (as fractional-GPU trials share a device: the
first way, which the studies use). Prints the training seconds each way, the ratios, how far stacked and
alone end apart (largest weight difference, each seed's test error) and writes them as JSON with --json.

    python benchmarks/stacked_seeds.py --sizes 280 4430 --seeds 0 1 2 3 4 --epochs 1 --device cpu
    python benchmarks/stacked_seeds.py --sizes 280 4430 40818 --seeds 0 1 2 3 4 --epochs 2 --device cuda

Stacking is the same computation per seed, not the same floating-point sums: a vmapped convolution runs as
one grouped convolution, so the weights differ in their last bits after a step and drift further over an
epoch (the comparison says by how much). Table 3's batch sizes and learning rates; the epochs are cut for time.
"""

from __future__ import annotations

import argparse
import copy
import json
import queue
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from benchmarks.timing import sync
from harness.data.mnist import ImageSplits, load_mnist
from harness.models.lenet import LeNet, lenet_for_size
from harness.models.training import TrainConfig, train_classifier


def seeded_lenets(size: int, seeds: list[int], images: ImageSplits, device: torch.device) -> list[LeNet]:
    """One LeNet per seed, initialised as the S1 trial does (torch.manual_seed(seed), then the constructor)."""
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(LeNet(lenet_for_size(size), pixel_mean=images.pixel_mean, pixel_std=images.pixel_std).to(device))
    return models


def train_stacked(models: list[LeNet], inputs: torch.Tensor, labels: torch.Tensor, lr: float, batch_size: int,
                  epochs: int, seeds: list[int],
                  prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
    """Train `models` (same architecture, one device) as one: seed i's batches follow the order train_classifier
    draws for seeds[i] (a CPU generator per seed), its loss is the mean cross-entropy of its own batch, and the
    summed loss gives every seed exactly its own gradient; Adam is elementwise, so one optimiser over the
    stacked weights is each seed's own. The trained weights are written back into `models`. `prepare` maps a
    batch of images to the input (default: the first model's standardise; the pixel constants are shared).
    As S1 trains: constant learning rate, no weight decay (train_classifier's cosine schedule is not offered)."""
    device, n, s = inputs.device, inputs.shape[0], len(models)
    params, buffers = stack_module_state(models)  # {name: (S, ...)} leaves that require grad
    base = copy.deepcopy(models[0]).to("meta")

    def logits_of(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (x,))

    forward = vmap(logits_of)
    opt = torch.optim.Adam(list(params.values()), lr=lr, **({"fused": True} if device.type == "cuda" else {}))
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    prepare = prepare or models[0].standardise
    for _ in range(epochs):
        orders = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(device)  # (S, n)
        for start in range(0, n, batch_size):
            idx = orders[:, start : start + batch_size]  # (S, b)
            b = idx.shape[1]
            x = prepare(inputs[idx.reshape(-1)])
            out = forward(params, buffers, x.reshape(s, b, *x.shape[1:]))  # (S, b, C)
            per_point = nn.functional.cross_entropy(out.reshape(s * b, -1), labels[idx.reshape(-1)], reduction="none")
            loss = per_point.reshape(s, b).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        for i, model in enumerate(models):
            for name, p in model.named_parameters():
                p.copy_(params[name][i])
    for model in models:
        model.eval()


def test_error(model: LeNet, images: ImageSplits) -> float:
    device = model.pixel_mean.device
    with torch.no_grad():
        logits = model(model.standardise(torch.from_numpy(images.test_x).to(device)))
    return float((logits.argmax(1).cpu().numpy() != images.test_y).mean())


def one_after_another(size: int, seeds: list[int], epochs: int, x: torch.Tensor, y: torch.Tensor,
                      images: ImageSplits) -> list[LeNet]:
    """The seeds trained by train_classifier, one after another (the studies' way), from their initialisation."""
    spec = lenet_for_size(size)
    models = seeded_lenets(size, seeds, images, x.device)
    for model, seed in zip(models, seeds, strict=True):
        train_classifier(model, x, y, TrainConfig(spec.lr, spec.batch_size, epochs, seed), prepare=model.standardise)
    return models


def stacked(size: int, seeds: list[int], epochs: int, x: torch.Tensor, y: torch.Tensor,
            images: ImageSplits) -> list[LeNet]:
    """The seeds trained as one stacked model, from their initialisation."""
    spec = lenet_for_size(size)
    models = seeded_lenets(size, seeds, images, x.device)
    train_stacked(models, x, y, spec.lr, spec.batch_size, epochs, seeds)
    return models


def timed(run: Callable[[], list[LeNet]], device: torch.device, repeats: int) -> tuple[float, list[LeNet]]:
    """(median seconds of `repeats` runs, the last run's models), the device's queued work included."""
    seconds = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        models = run()
        sync(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), models


def _train_one(size: int, seed: int, epochs: int, device: str, threads: int, repeats: int, barrier,
               results) -> None:
    """A worker process: one seed trained alone `repeats` times after a warm-up, each run started when every
    worker is ready; puts (repeat, start, end) per run."""
    torch.set_num_threads(threads)
    images = load_mnist()
    x, y = torch.from_numpy(images.train_x).to(device), torch.from_numpy(images.train_y).to(device)
    warm = lenet_for_size(size).batch_size * 2
    one_after_another(size, [seed], 1, x[:warm], y[:warm], images)
    for r in range(repeats):
        barrier.wait(timeout=600)
        start = time.time()
        one_after_another(size, [seed], epochs, x, y, images)
        sync(device)
        results.put((r, start, time.time()))


def concurrent_seconds(size: int, seeds: list[int], epochs: int, device: torch.device, repeats: int) -> float:
    """Median wall time of the seeds trained at once, one process each (the CPU's cores shared out between
    them): from the first worker's start to the last one's end, loading, process start and warm-up left out.
    A worker that fails ends the measurement with an error, not a wait."""
    ctx = torch.multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(len(seeds)), ctx.Queue()
    threads = max(1, torch.get_num_threads() // len(seeds)) if device.type == "cpu" else 1
    workers = [ctx.Process(target=_train_one, daemon=True,
                           args=(size, seed, epochs, str(device), threads, repeats, barrier, results))
               for seed in seeds]
    runs: dict[int, list[tuple[float, float]]] = {}
    try:
        for w in workers:
            w.start()
        while sum(map(len, runs.values())) < repeats * len(seeds):
            try:
                r, start, end = results.get(timeout=1)
                runs.setdefault(r, []).append((start, end))
            except queue.Empty:
                dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a training worker of LeNet-{size} failed (exit code {dead[0]})") from None
                if all(w.exitcode == 0 for w in workers) and results.empty():
                    raise RuntimeError(f"the training workers of LeNet-{size} ended without reporting") from None
    finally:
        for w in workers:
            w.terminate()
            w.join()
    return statistics.median(max(e for _, e in t) - min(s for s, _ in t) for t in runs.values())


def compare(size: int, seeds: list[int], epochs: int, images: ImageSplits, device: torch.device,
            repeats: int = 3) -> dict:
    """Train `seeds` of LeNet-`size` one after another, at once in processes, and stacked (each the median of
    `repeats` runs after a warm-up of two batches each way); seconds, ratios and how far apart stacked and
    alone end."""
    spec = lenet_for_size(size)
    x = torch.from_numpy(images.train_x).to(device)
    y = torch.from_numpy(images.train_y).to(device)
    warm = spec.batch_size * 2  # cuDNN's and the allocator's first calls, for both ways
    one_after_another(size, seeds, 1, x[:warm], y[:warm], images)
    stacked(size, seeds, 1, x[:warm], y[:warm], images)
    one_by_one, alone = timed(lambda: one_after_another(size, seeds, epochs, x, y, images), device, repeats)
    together, stack = timed(lambda: stacked(size, seeds, epochs, x, y, images), device, repeats)
    at_once = concurrent_seconds(size, seeds, epochs, device, repeats)
    gap = max(float((p - q).detach().abs().max()) for a, b in zip(alone, stack, strict=True)
              for p, q in zip(a.parameters(), b.parameters(), strict=True))
    return {"size": size, "seeds": seeds, "epochs": epochs, "batch_size": spec.batch_size, "repeats": repeats,
            "steps": epochs * -(-x.shape[0] // spec.batch_size), "one_by_one_s": one_by_one, "processes_s": at_once,
            "stacked_s": together, "ratio": one_by_one / together, "ratio_to_processes": at_once / together,
            "max_weight_gap": gap,
            "test_error_one_by_one": [test_error(m, images) for m in alone],
            "test_error_stacked": [test_error(m, images) for m in stack]}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[280, 4430])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--epochs", type=int, default=1, help="training epochs (Table 3's are 50-100)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3, help="runs of each way; their median is reported")
    p.add_argument("--json", default=None, help="also write the results here (after each size)")
    args = p.parse_args(argv)
    for size in args.sizes:
        lenet_for_size(size)  # an unknown size fails before any training
    device = torch.device(args.device)
    images = load_mnist()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; {len(args.seeds)} seeds, {args.epochs} epoch(s), {images.train_y.size} training images")
    print("| LeNet | batch | steps per seed | one after another | one process per seed | stacked | "
          "stacked vs one after another | vs processes | max weight gap | test error (%) alone | stacked |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for size in args.sizes:
        r = compare(size, args.seeds, args.epochs, images, device, args.repeats)
        results.append(r)
        errs = [" ".join(f"{100 * e:.2f}" for e in r[k]) for k in ("test_error_one_by_one", "test_error_stacked")]
        print(f"| {size:,} | {r['batch_size']} | {r['steps']:,} | {r['one_by_one_s']:.1f} s | {r['processes_s']:.1f} s "
              f"| {r['stacked_s']:.1f} s | **{r['ratio']:.2f}x** | **{r['ratio_to_processes']:.2f}x** "
              f"| {r['max_weight_gap']:.1e} | {errs[0]} | {errs[1]} |", flush=True)
        if args.json:  # after each size, so that a run cut off still leaves what it measured
            Path(args.json).write_text(json.dumps({"device": name, "results": results}, indent=1))
    return results


if __name__ == "__main__":
    main()
