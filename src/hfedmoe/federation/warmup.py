"""Router warm-up of a MoEfied model before federation (issue 8, deliverable 2).

MoEfication gives routers whose probabilities are nearly uniform (mean top probability ~0.2 of 8),
so Eq. 2's weights and every importance score built on them say little. The warm-up distils each
router towards its own experts: for every real token of a public batch the *teacher* is the set of
``top_k`` experts with the largest output norm ``||E_e(x)||`` (the experts that contribute most to
the dense FFN the model was split from; MoEfication's "ground-truth" routing), and the router is
trained with cross-entropy towards that set (uniform over it), plus a small Switch-style
load-balancing term ``E * sum_e f_e P_e``. Only router weights change; the public split is
disjoint from every client's and the test data, and its labels are not used.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from hfedmoe.client.train import evaluate, to_device, trainable_dense_names
from hfedmoe.data.batches import TokenizedTexts, iter_batches
from hfedmoe.moe import MoEModel

log = logging.getLogger(__name__)

LOAD_BALANCE_WEIGHT = 0.01


@torch.no_grad()
def mean_top_prob(mm: MoEModel, tokens: TokenizedTexts, indices: np.ndarray, batch_size: int = 64,
                  max_batches: int = 8) -> float:
    """Mean over real tokens and MoE layers of the router's largest probability."""
    model = mm.model
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for b, batch in enumerate(iter_batches(tokens, indices, batch_size, shuffle=False)):
        if b >= max_batches:
            break
        count += int(batch["attention_mask"].sum()) * mm.num_layers  # host batch: no device read
        batch = to_device(batch, device)
        with mm.capture_routing(batch["attention_mask"]) as cap:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        for layer in range(mm.num_layers):
            r = cap.layer(layer)
            top = r.gate_probs.max(dim=-1).values * r.token_mask  # (T,) 0 at padding
            total += top.sum()
    model.train(was)
    return float(total) / max(count, 1)  # one device read


def _expert_output_norms(experts, x: torch.Tensor) -> torch.Tensor:
    """(T, E) ``||E_e(x)||`` of every fused MoEfied expert on ``x (T, H)``."""
    up = experts.up_proj  # (E, I/E, H)
    h = torch.einsum("th,eih->tei", x, up) + experts.up_proj_bias.unsqueeze(0)  # (T, E, I/E)
    h = experts.act_fn(h)
    out = torch.einsum("tei,ehi->teh", h, experts.down_proj)  # (T, E, H)
    return out.norm(dim=-1)


def warmup_routers(mm: MoEModel, tokens: TokenizedTexts, public_idx: np.ndarray, *, steps: int, lr: float,
                   batch_size: int, seed: int) -> dict[str, float]:
    """Train the routers of ``mm`` for ``steps`` steps on ``public_idx``; returns the mean top
    router probability before and after (on the public split) and the final distillation loss."""
    if steps <= 0 or len(public_idx) == 0:
        return {}
    model = mm.model
    layers = mm._layers
    if any(not hasattr(info.experts, "up_proj_bias") for info in layers):
        raise ValueError("router warm-up supports MoEfied BERT/MiniLM experts only")
    before = mean_top_prob(mm, tokens, public_idx)
    routers = [info.router.weight for info in layers]
    opt = torch.optim.Adam(routers, lr=lr)
    inputs: dict[int, torch.Tensor] = {}
    hooks = [
        info.block.register_forward_pre_hook(lambda mod, args, i=info.index: inputs.__setitem__(i, args[0].detach()))
        for info in layers
    ]
    last_loss = torch.tensor(float("nan"))
    try:
        with _training_only(model, routers):
            for batch in _public_batches(tokens, public_idx, batch_size, steps, seed):
                batch = to_device(batch, routers[0].device)
                with torch.no_grad():
                    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                mask = batch["attention_mask"].reshape(-1).bool()  # (T,)
                loss = torch.zeros((), device=routers[0].device)
                for info in layers:
                    x = inputs[info.index].reshape(-1, inputs[info.index].shape[-1])[mask]  # (T_real, H)
                    with torch.no_grad():
                        norms = _expert_output_norms(info.experts, x)  # (T_real, E)
                        teacher = torch.zeros_like(norms).scatter_(1, norms.topk(info.top_k, dim=-1).indices,
                                                                   1.0 / info.top_k)  # (T_real, E)
                    logp = F.log_softmax(F.linear(x, info.router.weight), dim=-1)  # (T_real, E)
                    probs = logp.exp()
                    frac = F.one_hot(probs.topk(info.top_k, dim=-1).indices, info.num_experts).float().mean((0, 1))
                    balance = info.num_experts * (frac * probs.mean(0)).sum()
                    loss = loss + (-(teacher * logp).sum(-1).mean()) + LOAD_BALANCE_WEIGHT * balance
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                last_loss = loss.detach()
    finally:
        for h in hooks:
            h.remove()
    last = float(last_loss) / len(layers)  # one device read per warm-up, not per step
    after = mean_top_prob(mm, tokens, public_idx)
    log.info("router warm-up: %d steps, mean top probability %.3f -> %.3f", steps, before, after)
    return {"router_top_prob_before": before, "router_top_prob_after": after, "router_warmup_loss": last}


def warmup_head(mm: MoEModel, tokens: TokenizedTexts, public_idx: np.ndarray, *, steps: int, lr: float,
                batch_size: int, seed: int) -> dict[str, float]:
    """Train only the task head (the "head" part: classifier and pooler) of ``mm`` for ``steps``
    Adam steps on the labelled public split, every other weight frozen; returns the head's
    accuracy and mean loss on the public split before and after.

    With a head that stays fixed afterwards (``train.trainable`` without "head"), the experts and
    routers are the only parameters federated training changes, so what a client trains is
    decided by its expert selection alone (docs/results/choice-checks/)."""
    if steps <= 0 or len(public_idx) == 0:
        return {}
    model = mm.model
    dense = mm.dense_named_parameters()
    params = [dense[n] for n in trainable_dense_names(mm, ["head"])]
    if not params:
        raise ValueError("head warm-up: the model has no head parameters")
    opt = torch.optim.Adam(params, lr=lr)
    fit0 = evaluate(mm, tokens, public_idx, batch_size)
    with _training_only(model, params):  # eval mode: the frozen body's features without dropout
        for batch in _public_batches(tokens, public_idx, batch_size, steps, seed):
            loss = model(**to_device(batch, params[0].device)).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    fit1 = evaluate(mm, tokens, public_idx, batch_size)
    acc0, loss0, acc1, loss1 = fit0["accuracy"], fit0["loss"], fit1["accuracy"], fit1["loss"]
    log.info("head warm-up: %d steps, public accuracy %.3f -> %.3f, loss %.3f -> %.3f", steps, acc0, acc1,
             loss0, loss1)
    return {"head_public_acc_before": acc0, "head_public_acc_after": acc1, "head_public_loss_before": loss0,
            "head_public_loss_after": loss1}


@contextmanager
def _training_only(model: torch.nn.Module, params: list[torch.Tensor]) -> Iterator[None]:
    """Inside: only ``params`` require gradients and ``model`` is in eval mode (no dropout); on
    exit every parameter's flag and the model's mode are restored."""
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    was = model.training
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    model.eval()
    try:
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
        model.train(was)


def _public_batches(tokens: TokenizedTexts, idx: np.ndarray, batch_size: int, steps: int,
                    seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Exactly ``steps`` shuffled batches of ``idx``, epoch after epoch (one seeded generator)."""
    rng = np.random.default_rng(seed)
    step = 0
    while step < steps:
        for batch in iter_batches(tokens, idx, batch_size, shuffle=True, rng=rng):
            if step >= steps:
                return
            yield batch
            step += 1
