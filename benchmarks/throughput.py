"""Training and evaluation throughput of a method (Conv4, 28×28, 5-way 1-shot 15-query).

``--method protonet`` (default), ``matching`` (full-context embeddings, 5 processing steps: the
model of easyfsl's MatchingNetworks at 5-way 1-shot) or ``siamese`` (``--loss``). Prints one JSON
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
    parser.add_argument("--method", default="protonet", choices=["protonet", "matching", "siamese"])
    parser.add_argument("--loss", default="triplet", help="siamese: contrastive, triplet or koch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-episodes", type=int, default=300)
    parser.add_argument("--eval-episodes", type=int, default=1000)
    parser.add_argument("--meta-batch", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="training arithmetic (TrainConfig.precision)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="compiled / fused backbones (kshot's default) or eager PyTorch")
    args = parser.parse_args()
    configure_cpu(args.threads, compile=args.compile)
    # the peers' protocol: background characters x 4 rotations for training, 659 evaluation ones
    train_data = load_omniglot("lake", "train", 28, rotations=True, progress=False)
    test_data = load_omniglot("lake", "test", 28, progress=False)
    torch.manual_seed(0)
    options = {"loss": args.loss} if args.method == "siamese" else {}
    learner = build_learner(args.method, options, train_data.item_shape)
    config = TrainConfig(episodes=args.train_episodes, ways=5, shots=1, queries=15,
                         meta_batch=args.meta_batch, val_episodes=0, log_every=10**9,
                         precision=args.precision)
    with tempfile.TemporaryDirectory() as run_dir:
        warmup = Trainer(learner, TrainConfig(episodes=20, ways=5, shots=1, queries=15,
                                              val_episodes=0, precision=args.precision),
                         run_dir + "/w", train_data,
                         progress=False)
        warmup.fit()
        trainer = Trainer(learner, config, run_dir + "/t", train_data, progress=False)
        started = time.perf_counter()
        trainer.fit()
        train_seconds = time.perf_counter() - started
    eval_seed = int(os.environ.get("EVAL_SEED", "123"))
    sampler = EpisodeSampler(test_data, 5, 1, 15, seed=eval_seed)
    report = evaluate(learner, sampler, args.eval_episodes)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "library": "kshot", "method": args.method, **options, "compile": args.compile, "precision": args.precision, "torch": torch.__version__,
        "train_episodes_per_s": round(args.train_episodes / train_seconds, 2),
        "eval_episodes_per_s": round(report.episodes_per_second, 2),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "threads": args.threads, "meta_batch": args.meta_batch, "eval_seed": eval_seed,
        "eval_accuracy_untrained_check": round(report.accuracy * 100, 2),
    }))


if __name__ == "__main__":
    main()
