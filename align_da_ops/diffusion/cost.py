"""The cost of one prior network evaluation, to compare architectures at equal cost (`align-da bench prior`).

`network_cost(net, latent_shape)`: parameters, forward FLOPs of one evaluation of a batch (torch's counter:
matmuls, convolutions and attention; element-wise work uncounted), and median wall milliseconds of one
evaluation (no gradient) and of one training step's loss, forward and backward, on the network's device.
"""

from __future__ import annotations

import statistics

import torch
from torch.utils.flop_counter import FlopCounterMode

from align_da_ops.timing import timed_runs


def _median_ms(fn, repeats: int, device: torch.device) -> float:
    return 1000 * statistics.median(timed_runs(fn, repeats, device))


def network_cost(net: torch.nn.Module, latent_shape, batch: int = 4, repeats: int = 20, seed: int = 0) -> dict:
    """{parameters, gflops (forward, per batch), ms_eval (forward, per batch), ms_train (loss + backward)} of a
    `PreconditionedPrior` on latents of `latent_shape` (Cz, h, w) at t = 0.5, random inputs."""
    device = next(net.parameters()).device
    g = torch.Generator().manual_seed(seed)
    z, cond, eps = (torch.randn((batch, *latent_shape), generator=g).to(device) for _ in range(3))
    t = torch.full((batch,), 0.5, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(z, t, cond)
    with torch.no_grad():
        ms_eval = _median_ms(lambda: net(z, t, cond), repeats, device)

    def step():
        net.zero_grad(set_to_none=True)
        net.loss(z, t, eps, cond).mean().backward()

    ms_train = _median_ms(step, repeats, device)
    net.zero_grad(set_to_none=True)
    return {"parameters": sum(p.numel() for p in net.parameters()), "gflops": counter.get_total_flops() / 1e9,
            "ms_eval": ms_eval, "ms_train": ms_train}
