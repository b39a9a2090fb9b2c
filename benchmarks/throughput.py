"""Training and evaluation throughput of a method (Conv4, 28×28, 5-way 1-shot 15-query).

``--method protonet`` (default), ``matching`` (full-context embeddings, 5 processing steps: the
model of easyfsl's MatchingNetworks at 5-way 1-shot), ``siamese`` (``--loss``) or ``maml``
(learn2learn's protocol: second order, 1 query per class in training, meta-batch 32, 1 inner step
with α = 0.4 in training and at test; ``train_episodes_per_s`` counts meta-iterations, and
``--memory-check N`` adds the peak resident memory after 100, 200, 500, 1000, ... and N
meta-iterations: ``peak_rss_mb_after_<steps>``). Prints one JSON
line: {"library", "method", "compile", "train_episodes_per_s", "eval_episodes_per_s",
"peak_rss_mb", ...}. ``benchmarks/throughput.sh`` runs it beside easyfsl in the same run.
Data: Omniglot background (train) and evaluation (test) alphabets, in memory, as easyfsl's and
learn2learn's figures in the issue were measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time

import torch

from kshot.data.episodes import EpisodeSampler
from kshot.data.omniglot import load_omniglot
from kshot.evaluate import evaluate
from kshot.methods import build_learner
from kshot.runtime import configure_cpu
from kshot.train import TrainConfig, Trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="protonet",
                        choices=["protonet", "matching", "siamese", "maml"])
    parser.add_argument("--loss", default="triplet", help="siamese: contrastive, triplet or koch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-episodes", type=int, default=300)
    parser.add_argument("--eval-episodes", type=int, default=1000)
    parser.add_argument("--meta-batch", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="training arithmetic (TrainConfig.precision)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--memory-check", type=int, default=0, metavar="N",
                        help="maml: also train to N meta-iterations, peak memory after 100, 200, "
                             "500, ... and N")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="compiled / fused backbones (kshot's default) or eager PyTorch")
    args = parser.parse_args()
    configure_cpu(args.threads, compile=args.compile)
    # the peers' protocol: background characters x 4 rotations for training, 659 evaluation ones
    train_data = load_omniglot("lake", "train", 28, rotations=True, progress=False)
    test_data = load_omniglot("lake", "test", 28, progress=False)
    torch.manual_seed(0)
    options = {"loss": args.loss} if args.method == "siamese" else {}
    queries, meta_batch = 15, args.meta_batch
    if args.method == "maml":
        options = {"n_way": 5, "inner_steps": 1, "inner_lr": 0.4, "test_inner_steps": 1}
        queries, meta_batch = 1, 32
    learner = build_learner(args.method, options, train_data.item_shape)
    iterations = args.train_episodes  # optimiser steps (MAML: meta-iterations of meta_batch tasks)
    config = TrainConfig(episodes=iterations * meta_batch, ways=5, shots=1, queries=queries,
                         meta_batch=meta_batch, val_episodes=0, log_every=10**9,
                         precision=args.precision, schedule="constant")
    memory = {}
    with tempfile.TemporaryDirectory() as run_dir:
        warmup = Trainer(learner, TrainConfig(episodes=2 * meta_batch, ways=5, shots=1,
                                              queries=queries, meta_batch=meta_batch,
                                              val_episodes=0, precision=args.precision),
                         run_dir + "/w", train_data, device=args.device,
                         progress=False)
        warmup.fit()
        trainer = Trainer(learner, config, run_dir + "/t", train_data, device=args.device,
                          progress=False)
        started = time.perf_counter()
        trainer.fit()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - started
        if args.memory_check:
            memory = memory_check(learner, train_data, queries, meta_batch, args.memory_check,
                                  run_dir + "/m", args.device)
    eval_seed = int(os.environ.get("EVAL_SEED", "123"))
    sampler = EpisodeSampler(test_data, 5, 1, 15, seed=eval_seed)
    report = evaluate(learner, sampler, args.eval_episodes, device=args.device)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "library": "kshot", "method": args.method, **options, "compile": args.compile, "precision": args.precision, "torch": torch.__version__,
        "train_episodes_per_s": round(iterations / train_seconds, 2),
        "eval_episodes_per_s": round(report.episodes_per_second, 2),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "threads": args.threads, "meta_batch": meta_batch, "device": args.device, "eval_seed": eval_seed,
        "eval_accuracy_untrained_check": round(report.accuracy * 100, 2), **memory,
    }))


def memory_check(learner, train_data, queries: int, meta_batch: int, iterations: int,
                 run_dir: str, device: str = "cpu") -> dict[str, float]:
    """Peak resident memory (MB) after 100, 200, 500, 1000, 2000, ... and ``iterations`` training
    steps, a curve of the peak by iteration (and on a GPU the peak of its allocated memory)."""
    peaks = {}
    marks = sorted({m * 10**e for e in range(2, 9) for m in (1, 2, 5) if m * 10**e < iterations}
                   | {iterations})
    for steps in marks:
        config = TrainConfig(episodes=steps * meta_batch, ways=5, shots=1, queries=queries,
                             meta_batch=meta_batch, val_episodes=0, log_every=10**9,
                             schedule="constant", checkpoint_every_s=10**9)
        trainer = Trainer(learner, config, run_dir, train_data, device=device, progress=False)
        trainer.fit(resume=True)  # continues from the 100 steps to ``iterations``
        peaks[f"peak_rss_mb_after_{steps}"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        if device.startswith("cuda"):
            peaks[f"peak_gpu_mb_after_{steps}"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peaks


if __name__ == "__main__":
    main()
