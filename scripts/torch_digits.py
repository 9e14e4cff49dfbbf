#!/usr/bin/env python3
"""The digits MLP of `cli/examples/digits_mlp.rs`, side by side in PyTorch.

    cargo build --release --example digits_mlp
    python3 scripts/torch_digits.py [--threads 2]

Runs the lensopt example with `--trace`, then trains the same network in
PyTorch (torch.optim.Adam, lr 1e-3, f32) from the same initial weights on the
same batches, and prints:
  - the loss of both for the first 50 steps and the largest relative
    difference (documented tolerance: 1e-3; both compute in f32, with
    different summation orders in the matrix products);
  - the time per training step (batch 128: forward, backward, Adam) of both,
    measured in this run, each on the same machine with the same threads.
Not part of CI (needs torch).
"""

import argparse
import json
import os
import subprocess
import time

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--example", default="target/release/examples/digits_mlp")
    ap.add_argument("--trace", default="/tmp/lensopt_digits_trace.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    out = subprocess.run([args.example, "--trace", args.trace], check=True, capture_output=True, text=True, env=env).stdout
    print(out.strip().splitlines()[-1])
    trace = json.load(open(args.trace))

    data = np.loadtxt("data/digits.csv", delimiter=",")
    x_all = torch.tensor(data[:, :64] / 16.0, dtype=torch.float32)
    y_all = torch.tensor(data[:, 64], dtype=torch.long)
    train = trace["train_indices"]
    x_train, y_train = x_all[train], y_all[train]

    model = torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 10))
    names = ["hidden1", "hidden2", "out"]
    with torch.no_grad():
        for layer, name in zip([model[0], model[2], model[4]], names):
            w = trace["params"][f"{name}.weight"]
            b = trace["params"][f"{name}.bias"]
            layer.weight.copy_(torch.tensor(w["values"], dtype=torch.float32).reshape(w["shape"]))
            layer.bias.copy_(torch.tensor(b["values"], dtype=torch.float32).reshape(b["shape"]))
    opt = torch.optim.Adam(model.parameters(), lr=trace["lr"])
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(idx):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x_train[idx]), y_train[idx])
        loss.backward()
        opt.step()
        return loss.item()

    ours = trace["losses"]
    theirs = [step(torch.tensor(b)) for b in trace["batches"]]
    worst = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(ours, theirs))
    print(f"first {len(ours)} steps: largest relative loss difference {worst:.2e} (tolerance 1e-3): "
          f"{'agree' if worst <= 1e-3 else 'DIFFER'}")
    for i in [0, 1, 2, 9, 24, 49]:
        if i < len(ours):
            print(f"  step {i + 1:>2}: lensopt {ours[i]:.6f}  torch {theirs[i]:.6f}")

    # Time per step, batch 128, the same epochs of shuffled batches.
    rng = np.random.default_rng(0)
    n = len(train)
    steps, started = 0, time.perf_counter()
    for _ in range(60):
        order = torch.tensor(rng.permutation(n))
        for k in range(0, n, 128):
            step(order[k:k + 128])
            steps += 1
    torch_ms = (time.perf_counter() - started) * 1e3 / steps
    print(f"time per training step (batch 128): lensopt {trace['ms_per_step']:.3f} ms, "
          f"torch {torch_ms:.3f} ms ({torch.__version__}, {args.threads} threads)")


if __name__ == "__main__":
    main()
