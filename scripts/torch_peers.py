#!/usr/bin/env python3
"""PyTorch and pytorch-optimizer optimizer steps beside `lensopt bench`, in one run.

    python3 scripts/torch_peers.py [--threads 2] [--sizes 1000000,10000000] [--lensopt target/release/lensopt]

Measures, on the CPU, f32, with the same thread count:
  torch.optim.Adam(fused=True), Adam(foreach=True), AdamW(fused=True),
  pytorch_optimizer's Lion, Adan, DiffGrad and Lamb (their default, the
  references of the golden cases), then runs `lensopt bench --json --backend aot,jit`
  for the same rules and sizes (`--non-finite unchecked` unless told), and prints one JSON object per line (same fields as
  `lensopt bench`) followed by a comparison table. Bytes per element are
  counted as lensopt counts them (Adam 28, Lion 20, Adan 44, DiffGrad 36), and time is the
  fastest of the timed steps, as in `lensopt bench`.

With `--device cuda` it times torch's fused AdamW on the GPU beside
`lensopt bench --device cuda` (build lensopt with `--features cuda`).

With `--matrix` it times torch.optim.Muon, torch.optim.Adafactor and
pytorch_optimizer.Shampoo (roots' refresh excluded, as lensopt's row) on
1024 x 1024 and 4096 x 1024 f32 matrices beside `lensopt bench --matrix`.
torch's Muon runs Newton-Schulz in bfloat16, and is set beside lensopt's
`muon_bf16` row (`muon` with `ns_bf16 = true`; the `muon` row runs it in f32).

Not part of CI: it needs torch and pytorch_optimizer (pip install torch pytorch_optimizer).
"""

import argparse
import json
import os
import subprocess
import time

import torch

# The catalog rules with a peer, in the order of the table.
PEER_RULES = ["adam", "adamw", "lion", "adan", "diffgrad", "lamb"]
BYTES = {"adam": 28, "adamw": 28, "lion": 20, "adan": 44, "diffgrad": 36, "lamb": 28}


def best_step_seconds(opt, seconds):
    opt.step()
    best = float("inf")
    start = time.perf_counter()
    count = 0
    while count < 3 or (time.perf_counter() - start < seconds and count < 1000):
        t = time.perf_counter()
        opt.step()
        best = min(best, time.perf_counter() - t)
        count += 1
    return best


def peers():
    import pytorch_optimizer as po

    return [
        ("torch_adam_fused", "adam", lambda p: torch.optim.Adam(p, lr=1e-3, fused=True)),
        ("torch_adam_foreach", "adam", lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True)),
        ("torch_adamw_fused", "adamw", lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True)),
        ("pytorch_optimizer_lion", "lion", lambda p: po.Lion(p, lr=1e-4)),
        ("pytorch_optimizer_adan", "adan", lambda p: po.Adan(p, lr=1e-3)),
        ("pytorch_optimizer_diffgrad", "diffgrad", lambda p: po.DiffGrad(p, lr=1e-3)),
        ("pytorch_optimizer_lamb", "lamb", lambda p: po.Lamb(p, lr=1e-3, weight_decay=0.01)),
    ]


def matrix_peers():
    import pytorch_optimizer as po

    return [
        ("torch_muon", "muon_bf16", lambda p: torch.optim.Muon(p, lr=0.02)),
        ("torch_adafactor", "adafactor", lambda p: torch.optim.Adafactor(p, lr=1e-2)),
        ("pytorch_optimizer_shampoo", "shampoo",
         lambda p: po.Shampoo(p, lr=1e-3, preconditioning_compute_steps=10**9)),
    ]


def lensopt_rows(args, peer_rows, flags):
    """Runs `lensopt bench FLAGS` (JSON rows), prints the peers' rows and lensopt's, returns lensopt's."""
    out = subprocess.run([args.lensopt, "bench", *flags], check=True, capture_output=True, text=True).stdout
    ours = [json.loads(line) for line in out.splitlines() if line.strip()]
    for row in peer_rows + ours:
        print(json.dumps(row))
    return ours


def matrix(args):
    rows = []
    for shape in [(1024, 1024), (4096, 1024)]:
        for name, rule, make in matrix_peers():
            p = torch.nn.Parameter(torch.randn(*shape, dtype=torch.float32))
            p.grad = torch.randn(*shape, dtype=torch.float32)
            opt = make([p])
            s = best_step_seconds(opt, args.seconds)
            rows.append({"kernel": name, "rule": rule, "rows": shape[0], "cols": shape[1],
                         "step_ms": s * 1e3, "threads": args.threads, "torch": torch.__version__})
            del opt, p
    ours = lensopt_rows(args, rows, ["--matrix", "--json", "--threads", str(args.threads),
                                     "--seconds", str(args.seconds),
                                     "--non-finite", args.non_finite])
    print()
    print(f"{'rule':<10} {'shape':>10} {'lensopt ms':>11} {'peer ms':>9} {'lensopt speed-up':>17}")
    for mine in ours:
        peer = next((r for r in rows if r["rule"] == mine["rule"] and r["rows"] == mine["rows"]
                     and r["cols"] == mine["cols"]), None)
        if peer is None:
            continue
        print(f"{mine['rule']:<10} {str(mine['rows']) + 'x' + str(mine['cols']):>10} "
              f"{mine['step_ms']:>11.2f} {peer['step_ms']:>9.2f} {peer['step_ms'] / mine['step_ms']:>16.2f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--lensopt", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "lensopt"))
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (lensopt built with --features cuda)")
    ap.add_argument("--matrix", action="store_true", help="Muon, Adafactor and Shampoo on matrices")
    ap.add_argument("--non-finite", default="unchecked",
                    help="lensopt's policy: unchecked (as PyTorch, the default), refuse or skip")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.matrix:
        matrix(args)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    if args.device == "cuda":
        # GPU: torch's fused AdamW beside `lensopt bench --device cuda`.
        for n in sizes:
            p = torch.nn.Parameter(torch.randn(n, dtype=torch.float32, device="cuda"))
            p.grad = torch.randn(n, dtype=torch.float32, device="cuda")
            opt = torch.optim.AdamW([p], lr=1e-3, fused=True)
            def timed():
                torch.cuda.synchronize()
                opt.step()
                torch.cuda.synchronize()
            s = best_step_seconds(type("O", (), {"step": staticmethod(timed)})(), args.seconds)
            print(json.dumps({"kernel": "torch_adamw_fused", "device": "cuda", "gpu": torch.cuda.get_device_name(),
                              "n": n, "step_ms": s * 1e3, "gbps": 28 * n / s / 1e9}))
        out = subprocess.run([args.lensopt, "bench", "--device", "cuda", "--sizes", args.sizes,
                              "--seconds", str(args.seconds)], check=True, capture_output=True, text=True).stdout
        print(out.strip())
        return
    for n in sizes:
        for name, rule, make in peers():
            p = torch.nn.Parameter(torch.randn(n, dtype=torch.float32))
            p.grad = torch.randn(n, dtype=torch.float32)
            opt = make([p])
            s = best_step_seconds(opt, args.seconds)
            rows.append({"kernel": name, "rule": rule, "n": n, "dtype": "f32", "threads": args.threads,
                         "step_ms": s * 1e3, "gbps": BYTES[rule] * n / s / 1e9,
                         "torch": torch.__version__})
            del opt, p
    ours = lensopt_rows(args, rows, ["--json", "--non-finite", args.non_finite, "--threads", str(args.threads),
                                     "--sizes", args.sizes, "--rules", ",".join(PEER_RULES),
                                     "--backend", "aot,jit", "--seconds", str(args.seconds)])
    print()
    print(f"{'rule':<8} {'backend':<7} {'n':>10} {'lensopt GB/s':>13} {'ratio':>6}   peer (GB/s, lensopt speed-up)")
    for n in sizes:
        for rule in PEER_RULES:
            for mine in [r for r in ours if r["kernel"] == rule and r["n"] == n]:
                others = [r for r in rows if r["rule"] == rule and r["n"] == n]
                peer_text = ", ".join(f"{r['kernel']} {r['gbps']:.1f} ({r['step_ms'] / mine['step_ms']:.2f}x)"
                                      for r in others)
                print(f"{rule:<8} {mine['backend']:<7} {n:>10} {mine['gbps']:>13.1f} "
                      f"{mine['ratio_to_ceiling']:>6.2f}   {peer_text}")


if __name__ == "__main__":
    main()
