"""Client-level differential privacy of uploaded updates: clip, add Gaussian noise, account.

Each client, before uploading, clips its change to the global model (over every tensor it
uploads: trained expert slices, routers, dense parts) to L2 norm ``clip`` and adds
``N(0, (sigma clip)^2)`` noise to every uploaded coordinate. The server sees only noisy uploads,
so each upload is a Gaussian mechanism with sensitivity ``clip`` towards the server itself (no
trust in the server's aggregation, no amplification by client sampling claimed: the server knows
who was sampled). Over a run a client's guarantee composes over the rounds it uploaded in;
:func:`epsilon` asks Opacus's RDP accountant for that composition.

The noise comes from a cryptographically secure source on the client (:func:`secure_generator`:
a fresh 63-bit seed from ``secrets`` per upload, never derived from the run seed, the round or the
client id, all of which the server knows), so the server cannot regenerate it and subtract it. A
DP run therefore does not repeat bit for bit (a run with DP off still does).

Not protected: which experts a client trained (the sparsity pattern), its example count and
its usage / importance statistics travel in the clear (see docs/reliability.md, "What a deployment
protects").
"""

from __future__ import annotations

import math
import secrets
import warnings
from typing import Any

import torch

from hfedmoe.core.validation import Reference


def _uploaded(upd: Any, ref: Reference) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(uploaded tensor, its global counterpart) pairs, in a fixed order."""
    pairs = []
    for (layer, e) in sorted(upd.experts):
        for name in sorted(upd.experts[(layer, e)]):
            pairs.append((upd.experts[(layer, e)][name], ref.experts[layer][name][e]))
    for layer in sorted(upd.routers):
        for name in sorted(upd.routers[layer]):
            pairs.append((upd.routers[layer][name], ref.routers[layer][name]))
    for name in sorted(upd.dense):
        pairs.append((upd.dense[name], ref.dense[name]))
    return pairs


def secure_generator() -> torch.Generator:
    """A CPU generator seeded from the operating system's CSPRNG (``secrets``): one per upload."""
    return torch.Generator().manual_seed(secrets.randbits(63))


@torch.no_grad()
def privatize_update(upd: Any, ref: Reference, clip: float, sigma: float,
                     generator: torch.Generator | None = None) -> float:
    """Clip ``upd``'s change to ``clip`` (L2, over all uploaded tensors) and add Gaussian noise of
    standard deviation ``sigma * clip`` to every uploaded coordinate, in place.

    Returns the change's norm before clipping (kept on the client side: a diagnostic of how much
    clipping costs, not uploaded in a deployment). ``generator``: only for tests of the noise's
    distribution; by default a :func:`secure_generator` (the guarantee needs noise the server
    cannot regenerate).
    """
    generator = generator if generator is not None else secure_generator()
    pairs = _uploaded(upd, ref)
    norm = math.sqrt(sum(float((u.double() - g.double()).pow(2).sum()) for u, g in pairs))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    for u, g in pairs:
        delta = (u.double() - g.double()) * scale
        noise = torch.randn(u.shape, generator=generator, dtype=torch.float64) * (sigma * clip)
        u.copy_((g.double() + delta + noise).to(u.dtype))
    return norm


def epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``releases`` Gaussian releases of noise multiplier ``sigma``
    (Opacus RDP accountant, sample rate 1: every release is seen). 0 releases: 0."""
    if releases <= 0:
        return 0.0
    from opacus.accountants import RDPAccountant  # late: slow import, only with privacy on

    acc = RDPAccountant()
    for _ in range(int(releases)):
        acc.step(noise_multiplier=float(noise_multiplier), sample_rate=1.0)
    with warnings.catch_warnings():
        # "optimal order is the largest alpha": tiny noise, the epsilon is a valid but loose upper bound
        warnings.filterwarnings("ignore", message="Optimal order")
        return float(acc.get_epsilon(delta=float(delta)))
