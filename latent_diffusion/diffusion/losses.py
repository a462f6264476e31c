"""Per-element Gaussian divergences used by the variational bound (in nats).

Both take log-variances, not variances, because the learned variance of
Improved DDPM is parametrised in log space and tiny variances (beta_1 = 1e-4)
would lose precision otherwise.
"""

from __future__ import annotations

import math

import torch


# KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats.
def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


# -log N(x; mean, e^logvar), elementwise, in nats. This is the L_0 term for
# CONTINUOUS latents; guided-diffusion's discretized 8-bit likelihood only makes
# sense for pixels quantized to 256 levels.
def gaussian_nll(x, mean, logvar) -> torch.Tensor:
    return 0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dimensions: (B, ...) -> (B,)."""
    return x.mean(dim=tuple(range(1, x.ndim)))
