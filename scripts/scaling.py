#!/usr/bin/env python3
"""The cost model behind docs/scaling.md: memory per rank and bytes on the
wire per step for data-parallel training with no sharding, optimizer-state
sharding (ZeRO stage 1, what lensopt::dist implements) and state plus
gradient sharding (stage 2), checked first against the figures of the ZeRO
paper (Rajbhandari et al., SC 2020, Figure 1: 7.5B parameters on 64 GPUs).

    python3 scripts/scaling.py      # prints the markdown tables

Mixed precision as in the paper: parameters and gradients in 16 bits
(2 bytes each), an fp32 master copy of the parameters and the optimizer's
state in fp32. K is the optimizer's bytes per parameter beyond the 16-bit
parameter and gradient: master copy (4) plus its state.
"""

GB = 1e9

# Bytes of fp32 optimizer state per parameter, master weights included.
OPTIMIZERS = {
    # Adam: master (4) + two moments (8).
    "Adam": 12,
    # Adafactor (no first moment, factored second moment: rows + cols values
    # per matrix, negligible next to rows x cols): master (4) only.
    "Adafactor": 4,
    # Muon: master (4) + one momentum (4).
    "Muon": 8,
}


def memory_per_rank(params, k, ranks, mode):
    """Bytes per rank: 16-bit parameters and gradients, and K bytes of state per parameter."""
    p, g, s = 2 * params, 2 * params, k * params
    if mode == "none":
        return p + g + s
    if mode == "state":  # ZeRO-1
        return p + g + s / ranks
    if mode == "state+grad":  # ZeRO-2
        return p + (g + s) / ranks
    raise ValueError(mode)


def wire_per_rank(params, ranks, mode):
    """Bytes each rank sends per step with ring collectives on 16-bit values.

    No sharding: an all-reduce of the gradients, 2 (N-1)/N of them. Sharded
    state or gradients: a reduce-scatter of the gradients and an all-gather
    of the parameters, (N-1)/N each: the same volume (the paper's section 7).
    """
    return 2 * (ranks - 1) / ranks * 2 * params


def check_zero_paper():
    # Figure 1 of the paper: 7.5B parameters, K = 12, 64 GPUs.
    want = {"none": 120, "state": 31.4, "state+grad": 16.6}
    for mode, gb in want.items():
        got = memory_per_rank(7.5e9, 12, 64, mode) / GB
        assert abs(got - gb) < 0.06, (mode, got, gb)
    return want


def main():
    want = check_zero_paper()
    print("Check against the ZeRO paper (7.5B parameters, Adam, 64 GPUs):\n")
    print("| | paper | this model |\n|---|---|---|")
    for mode, gb in want.items():
        print(f"| {mode} | {gb} GB | {memory_per_rank(7.5e9, 12, 64, mode) / GB:.1f} GB |")
    for params, name in [(1e9, "1B"), (7e9, "7B"), (70e9, "70B")]:
        print(f"\n**{name} parameters**: memory per rank in GB (no sharding / state sharded / state and gradients sharded); bytes sent per rank per step in GB\n")
        print("| optimizer | ranks | none | state | state+grad | sent per step |")
        print("|---|---|---|---|---|---|")
        for opt, k in OPTIMIZERS.items():
            for ranks in [8, 64, 1024]:
                cells = [memory_per_rank(params, k, ranks, m) / GB for m in ["none", "state", "state+grad"]]
                sent = wire_per_rank(params, ranks, "state") / GB
                print(f"| {opt} | {ranks} | {cells[0]:.1f} | {cells[1]:.1f} | {cells[2]:.1f} | {sent:.1f} |")


if __name__ == "__main__":
    main()
