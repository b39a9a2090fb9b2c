"""The fused batch norm → ReLU → max-pool block (``kshot.nn.functional.TaskNormReluPool``) against
the plain layers, in one process: second-order MAML meta-iterations on learn2learn's protocol
(Conv4 28×28, 5-way 1-shot, 1 query per class, meta-batch 32, 1 inner step of α = 0.4), the two
models taking turns on the same real Omniglot tasks so that a busy machine slows both alike.

Prints one JSON line: {"plain_it_per_s", "fused_it_per_s", "ratio", "max_loss_difference",
"rounds", "threads", ...}; the losses of the two agree up to rounding (the same initialisation).
usage: python benchmarks/maml_block_ab.py [--threads 2] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from kshot.data.episodes import EpisodeSampler
from kshot.data.omniglot import load_omniglot
from kshot.methods import build_learner
from kshot.methods.maml import build_task_model
from kshot.nn.functional import TaskModel
from kshot.runtime import configure_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20, help="timed meta-iterations of each")
    args = parser.parse_args()
    configure_cpu(args.threads)
    data = load_omniglot("lake", "train", 28, rotations=True, progress=False)
    options = {"n_way": 5, "inner_steps": 1, "inner_lr": 0.4}
    torch.manual_seed(0)
    fused = build_learner("maml", options, data.item_shape)
    torch.manual_seed(0)
    plain = build_learner("maml", options, data.item_shape)
    plain.net, _ = build_task_model(plain.config, data.item_shape)  # its layers as written
    plain.model = TaskModel(plain.net, plain.config.norm, fuse=False)
    plain.net.load_state_dict(fused.net.state_dict())  # the same names: the same starting point
    plain.train()
    fused.train()
    sampler = EpisodeSampler(data, 5, 1, 1, seed=0)
    seconds = {"plain": 0.0, "fused": 0.0}
    gap = 0.0
    for index in range(args.rounds + 1):  # the first round warms up, untimed
        episode = sampler.batch(range(index * 32, index * 32 + 32))
        losses = {}
        for name, learner in (("plain", plain), ("fused", fused)):
            started = time.perf_counter()
            learner.zero_grad(set_to_none=True)
            loss = learner.loss(episode)[0]
            loss.backward()
            if index:
                seconds[name] += time.perf_counter() - started
            losses[name] = float(loss.detach())
        gap = max(gap, abs(losses["plain"] - losses["fused"]))
    print(json.dumps({
        "plain_it_per_s": round(args.rounds / seconds["plain"], 3),
        "fused_it_per_s": round(args.rounds / seconds["fused"], 3),
        "ratio": round(seconds["plain"] / seconds["fused"], 3),
        "max_loss_difference": gap, "rounds": args.rounds, "threads": args.threads,
        "meta_batch": 32, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
