"""Local fine-tuning of one client: per batch, capture routing, score, select within the budget,
backward through the selected experts only; track usage, importance and what was trained.

No engine imports: both engines call :func:`train_client` on a model that already holds the global
weights, and ship the returned :class:`ClientUpdate` to the server.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import torch

from hfedmoe.client.flops import flop_model
from hfedmoe.client.objective import add_prox_grad, label_counts, local_loss
from hfedmoe.client.parts import dense_names_for
from hfedmoe.client.profiling import forward_shape, profile_routing, to_device
from hfedmoe.core.flops import BatchShape
from hfedmoe.core.selection import routed_pair_counts
from hfedmoe.data.batches import TokenizedTexts, iter_batches, local_step_count
from hfedmoe.moe import MoEModel
from hfedmoe.client.diagnostics import SelectionDiagnostics
from hfedmoe.client.round_stats import RoundStats
from hfedmoe.client.state import evict_expert_state, experts_with_grad, grad_norms, live_expert_state

log = logging.getLogger(__name__)

# A selector picks the trainable experts of one layer from that layer's routing of this batch:
# indices, or an (E,) bool mask left on the device (read with the layer's dispatch, moe/hooks.py).
Selector = Callable[[int, object], "Sequence[int] | torch.Tensor"]


@dataclass
class TrainPlan:
    """What a method asks of one client for one round.

    Exactly one of ``selector`` (per batch, per layer, inside the forward), ``batch_subsets``
    (per batch, from a no-grad pre-pass over all layers: model-scope budgets) or
    ``static_subsets`` (fixed for the round; None per layer = all experts) is used.
    ``restrict`` limits routing (restrict mode / sub-MoE baselines).

    ``grad_selector`` (the oracle bound): every routed expert gets a gradient in this batch, then
    only the experts it returns per layer (from the per-expert gradient norms ``(L, E)`` and the
    routed mask ``(L, E)``) keep theirs and are stepped.
    ``profile``: before training, a no-grad *unrestricted* pass over up to ``profile_batches``
    batches of the client's data measures usage and importance ``(L, E)``; ``profile(usage,
    importance)`` then returns the plan actually trained (FedMoE / restrict mode choose the held
    sub-MoE from it, so the choice follows the current router).
    ``budget``: per-layer expert budget, used only for the selection diagnostics (set by the
    engine when a method leaves it None). ``on_batch`` is called with each batch before its
    forward. ``pooling``: how the importance the client uploads (``s^c``, mean per-batch Eq. 5)
    and its selection diagnostics read a sample ("sequence" | "token"; None = the run's
    ``TrainSettings.pooling``): HFedMoE sets its own, so its token ablation uploads token scores.
    ``aux_loss``: a term added to the task loss of every step, computed from the step's routing capture (taken with
    ``live=True``, so its ``live_probs`` carry gradient into the routers); its mean over the
    steps is reported as the metric ``aux_loss``.
    """

    selector: Selector | None = None
    batch_subsets: Callable[[object], list[Sequence[int]]] | None = None
    static_subsets: list[Sequence[int] | None] | None = None
    restrict: list[Sequence[int] | None] | None = None
    train_routers: bool = True
    grad_selector: Callable[[torch.Tensor, torch.Tensor], list[Sequence[int]]] | None = None
    profile: Callable[[torch.Tensor, torch.Tensor], "TrainPlan"] | None = None
    profile_batches: int = 4
    budget: int | None = None
    on_batch: Callable[[dict], None] | None = None
    pooling: str | None = None
    aux_loss: Callable[[object], torch.Tensor] | None = None


@dataclass
class TrainSettings:
    local_epochs: int = 1
    local_steps: int = 0
    min_local_steps: int = 0  # at least this many steps per round (local_epochs repeated), unless local_steps
    batch_size: int = 16
    lr: float = 5e-4
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    momentum: float = 0.9
    trainable: tuple[str, ...] = ("experts", "routers", "head")
    grad_mode: str = "no_grad"
    lam: float = 0.5
    beta: float = 0.1  # for the selection diagnostics only (methods carry their own beta)
    pooling: str = "sequence"  # importance upload and diagnostics, unless the plan says otherwise
    ib_scale: str = "raw"  # for the selection diagnostics only
    diagnostics: bool = True
    foreach: bool = True  # optimizer over all trained tensors at once (foreach kernels)
    dispatch: str = "loop"  # train.dispatch: loop | static | auto (resolve_dispatch)
    dtype: str = "float32"  # runtime.dtype: float16 scales the loss (GradScaler); autocast is on the model
    prox_mu: float = 0.0  # FedProx weight (client/objective.py)
    loss: str = "ce"  # ce | logit-adjusted | balanced (client/objective.py)


@dataclass
class ClientUpdate:
    """Everything the server needs from one client after one round (design.md, "Interfaces")."""

    client_id: int
    num_examples: int
    experts: dict[tuple[int, int], dict[str, torch.Tensor]]  # (layer, idx) -> trained slices
    routers: dict[int, dict[str, torch.Tensor]]  # layer -> router tensors
    dense: dict[str, torch.Tensor]  # trained dense params (head, attention, ...)
    usage: torch.Tensor  # (L, E) Eq. 16 over the client's tokens
    importance: torch.Tensor  # (L, E) s^c(e): mean per-batch importance
    trained: torch.Tensor  # (L, E) bool: updated in at least one step
    selected_counts: torch.Tensor  # (L, E) int: batches in which each expert was selected
    metrics: dict[str, float] = field(default_factory=dict)
    peak_expert_state: torch.Tensor | None = None  # (L,) max experts holding grad/opt state at once
    nonce: str = ""  # the server's nonce of the round, echoed (a stale or replayed update is rejected)

    def upload_bytes(self) -> int:
        """Bytes of the tensors this update carries (experts, routers, dense, statistics)."""
        n = sum(t.numel() * t.element_size() for d in self.experts.values() for t in d.values())
        n += sum(t.numel() * t.element_size() for d in self.routers.values() for t in d.values())
        n += sum(t.numel() * t.element_size() for t in self.dense.values())
        n += 2 * self.usage.numel() * 4 + self.trained.numel()
        return int(n)


def _optimizer(params: list[torch.Tensor], s: TrainSettings) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay, foreach=s.foreach)
    return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay, foreach=s.foreach)


def resolve_dispatch(dispatch: str, device: torch.device, dtype: str) -> str:
    """``train.dispatch`` for this run: ``"auto"`` is ``"static"`` on CUDA in bfloat16 (grouped_mm's
    CUDA kernel is bf16; other dtypes fall back to a per-group loop that reads the offsets to the
    host) and ``"loop"`` elsewhere (the faster of the two on the CPU, benchmarks/RESULTS.md)."""
    if dispatch != "auto":
        return dispatch
    return "static" if device.type == "cuda" and dtype == "bfloat16" else "loop"


def trainable_dense_names(mm: MoEModel, parts: Sequence[str]) -> list[str]:
    """Names of the dense parameters trained under ``parts`` (quantised, i.e. non-floating,
    weights of a 4-bit checkpoint are never trained)."""
    dense = mm.dense_named_parameters()
    return dense_names_for([n for n, p in dense.items() if p.is_floating_point()], list(parts))


def train_client(
    mm: MoEModel,
    client_id: int,
    data: TokenizedTexts,
    indices: np.ndarray,
    plan: TrainPlan,
    settings: TrainSettings,
    *,
    seed: int,
    progress: Callable[[dict], None] | None = None,
    nonce: str = "",
) -> ClientUpdate:
    """Train ``mm.model`` (holding the global weights) on ``indices`` of ``data`` and return the update.

    Randomness (shuffling, dropout) comes only from ``seed``, so a resumed run repeats exactly.
    ``nonce``: the server's nonce of this round, echoed in the update.
    """
    model = mm.model
    L, E = mm.num_layers, mm.num_experts
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.train()
    if len(indices) == 0:
        # nothing to train on: an empty update (no experts, routers or dense tensors), never an
        # endless search for a first batch when local_steps > 0
        log.warning("client %d: no training examples, skipping local training", client_id)
        return _empty_update(mm, client_id, nonce, num_examples=0)
    parts = tuple(settings.trainable)
    profiled: list[BatchShape] = []  # FedMoE's profiling pass: forward compute the client pays
    if plan.profile is not None:
        usage0, importance0, profiled = profile_routing(mm, data, indices, settings, plan.profile_batches,
                                                        np.random.default_rng([seed, 17]))
        budget, on_batch, pooling = plan.budget, plan.on_batch, plan.pooling
        plan = plan.profile(usage0, importance0)
        plan.budget = plan.budget if plan.budget is not None else budget
        plan.on_batch = plan.on_batch or on_batch
        plan.pooling = plan.pooling or pooling

    pooling = plan.pooling or settings.pooling  # what a sample of the uploaded importance is
    dense_names = trainable_dense_names(mm, parts)
    dense_params = mm.dense_named_parameters()
    expert_leaves = mm.expert_leaves() if "experts" in parts else {}
    train_routers = "routers" in parts and plan.train_routers

    if _trains_nothing(plan, parts, dense_names, train_routers):
        # e.g. fedavg-fit on a client whose budget cannot hold every expert, in a run that trains
        # only experts: no tensor may change, so no forward/backward is spent; the update is empty
        log.info("client %d: the plan trains no tensor this round, skipping local training", client_id)
        # it holds len(indices) examples; none of them trained a tensor
        return _empty_update(mm, client_id, nonce, num_examples=len(indices))
    # requires_grad: exactly the trainable dense params and routers; experts via train_only.
    saved_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for n in dense_names:
        dense_params[n].requires_grad_(True)
    for p in mm.router_parameters():
        p.requires_grad_(train_routers)

    params: list[torch.Tensor] = [dense_params[n] for n in dense_names]
    if train_routers:
        params += list(mm.router_parameters())
    for leaves in expert_leaves.values():
        params += list(leaves)
    opt = _optimizer(params, settings)
    dispatch = resolve_dispatch(settings.dispatch, device, settings.dtype)
    scaler = torch.amp.GradScaler(device.type) if settings.dtype == "float16" else None  # fp16 only
    anchors = [p.detach().clone() for p in params] if settings.prox_mu > 0 else []  # FedProx: w_global
    counts = None  # (C,) the client's label counts, for train.loss other than ce

    total_steps = local_step_count(len(indices), settings.batch_size, settings.local_epochs, settings.local_steps,
                                   settings.min_local_steps)

    trained = torch.zeros(L, E, dtype=torch.bool)
    shapes: list[tuple[int, int]] = []  # per step (sequences, padded length): host numbers
    aux_sum: float | torch.Tensor = 0.0  # on the device once added to (read once at the end)
    flops = flop_model(mm, parts, train_routers=train_routers)  # the one FLOP model (core/flops.py)
    fwd_flops, bwd_flops = sum(flops.forward(shape) for shape in profiled), 0.0
    diag = None
    if settings.diagnostics and plan.budget is not None:
        diag = SelectionDiagnostics(lam=settings.lam, beta=settings.beta, budget=plan.budget, num_experts=E,
                                    pooling=pooling, ib_scale=settings.ib_scale)
    stats = RoundStats(L, E, settings.lam, device, diag, pooling)  # on the device, read once at the end
    peak_state = torch.zeros(L, dtype=torch.long)  # max over steps of experts holding grad/opt state
    first_value: dict[tuple[int, int], list[torch.Tensor]] = {}  # expert -> value before its first step

    step = 0
    try:
        while step < total_steps:
            for batch in iter_batches(data, indices, settings.batch_size, shuffle=True, rng=rng):
                if step >= total_steps:
                    break
                batch = to_device(batch, device)
                num_seq, padded_len = (int(x) for x in batch["attention_mask"].shape)
                subsets = plan.static_subsets
                if plan.on_batch is not None:
                    plan.on_batch(batch)
                if plan.batch_subsets is not None:
                    with torch.no_grad(), mm.capture_routing(batch["attention_mask"]) as pre:
                        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                    subsets = plan.batch_subsets(pre)
                    fwd_flops += flops.forward(forward_shape(pre, batch["attention_mask"], L))
                with ExitStack() as stack:
                    if plan.restrict is not None:
                        stack.enter_context(mm.restrict_routing(plan.restrict))
                    cap = stack.enter_context(mm.capture_routing(batch["attention_mask"],
                                                                 live=plan.aux_loss is not None))
                    if "experts" not in parts:
                        choice = [[] for _ in range(L)]
                    elif plan.grad_selector is not None:
                        choice = [None] * L
                    else:
                        choice = plan.selector if plan.selector is not None else subsets
                    ctx = stack.enter_context(mm.train_only(choice, mode=settings.grad_mode, dispatch=dispatch,
                                                            slots=plan.budget))
                    out = model(**batch)
                    loss = out.loss
                    if settings.loss != "ce":
                        if counts is None:
                            counts = label_counts(data.labels[indices], out.logits.shape[-1])
                        loss = local_loss(settings.loss, out.logits, batch["labels"], counts)
                    total = loss
                    if plan.aux_loss is not None:
                        aux = plan.aux_loss(cap)
                        aux_sum = aux_sum + aux.detach().double()
                        total = loss + aux
                    (total if scaler is None else scaler.scale(total)).backward()
                    chosen = [ctx.selected[l] for l in range(L)]
                    if plan.grad_selector is not None and expert_leaves:
                        norms = grad_norms(expert_leaves, L, E)  # (L, E)
                        routed = torch.stack([routed_pair_counts(cap.layer(l).topk_idx, cap.layer(l).token_mask, E)
                                              for l in range(L)]).cpu() > 0  # (L, E)
                        chosen = [torch.as_tensor(sorted(int(e) for e in sel), dtype=torch.long)
                                  for sel in plan.grad_selector(norms, routed)]
                    # Per-round memory bound: only the experts trained in THIS step keep gradient
                    # and optimizer state (client/state.py explains the eviction choice).
                    keep = {(l, int(e)) for l in range(L) for e in chosen[l]}
                    evict_expert_state(opt, expert_leaves, keep)
                    if anchors:
                        if scaler is not None:  # the proximal term joins the true (unscaled) gradient
                            scaler.unscale_(opt)
                        add_prox_grad(params, anchors, settings.prox_mu)
                    for key in experts_with_grad(expert_leaves):
                        if key not in first_value:
                            first_value[key] = [t.detach().clone() for t in expert_leaves[key]]
                    if scaler is None:
                        opt.step()
                    else:  # unscale, skip the step on inf/NaN gradients, adapt the scale
                        scaler.step(opt)
                        scaler.update()
                    live = live_expert_state(opt, expert_leaves, L)  # (L,) the step's peak
                    peak_state = torch.maximum(peak_state, live)
                    opt.zero_grad(set_to_none=True)
                # usage, s_b (reused from the selector), selection counts and FLOP pairs: an expert
                # counts as trained only if a token reached it (else it got no gradient); the
                # oracle's every routed pair went through backward (it needs every gradient)
                stats.add_step(cap, chosen, loss, count_selected="experts" in parts,
                               all_routed_trained=plan.grad_selector is not None and "experts" in parts)
                shapes.append((num_seq, padded_len))
                step += 1
                if progress is not None:  # the loss as a 0-dim tensor: read only if it is shown
                    progress({"client": client_id, "step": step, "steps": total_steps, "loss": loss.detach(),
                              "live_expert_state": live.tolist()})
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved_flags[n])

    totals = stats.finish()  # the round's device reads
    num_batches_done = stats.num_steps
    for (num_seq, padded_len), (expert_pairs, trained_pairs) in zip(shapes, totals.step_pairs):
        f, b = flops.step(BatchShape(num_seq, padded_len, expert_pairs, trained_pairs))
        fwd_flops += f
        bwd_flops += b
    usage, importance, num_tokens = totals.usage, totals.importance, totals.num_tokens  # (L, E), (L, E)
    selected_counts = totals.selected_counts
    # trained = the expert's parameters really changed (not: it was selected)
    if first_value:  # one device->host read for every expert the round stepped
        keys = list(first_value)
        changed = torch.stack([torch.stack([(a != b.detach()).any() for a, b in zip(first_value[k], expert_leaves[k])]).any()
                               for k in keys]).tolist()
        for (l, e), c in zip(keys, changed):
            trained[l, e] = c
    experts = {}
    for l, e in trained.nonzero().tolist():
        experts[(l, e)] = mm.get_expert(l, e)
    routers = {l: mm.router_state(l) for l in range(L)} if train_routers else {}
    dense = {n: dense_params[n].detach().clone() for n in dense_names}
    metrics = {
        "train_loss": totals.loss_sum / max(num_batches_done, 1),
        "steps": float(num_batches_done),
        "tokens": float(num_tokens),
        "forward_flops": fwd_flops,
        "backward_flops": bwd_flops,
        "peak_expert_state_max": float(peak_state.max()) if L else 0.0,
    }
    if plan.aux_loss is not None:
        metrics["aux_loss"] = float(aux_sum) / max(num_batches_done, 1)
    if diag is not None:
        metrics.update(diag.counts())
    if not math.isfinite(metrics["train_loss"]):
        log.warning("client %d: non-finite training loss", client_id)
    return ClientUpdate(
        client_id=client_id,
        peak_expert_state=peak_state,
        num_examples=int(len(indices)),
        experts=experts,
        routers=routers,
        dense=dense,
        usage=usage,
        importance=importance,
        trained=trained,
        selected_counts=selected_counts,
        metrics=metrics,
        nonce=nonce,
    )


def length_sorted(data: TokenizedTexts, indices: np.ndarray) -> np.ndarray:
    """``indices`` ordered by token length (stable), so that each batch pads to similar lengths."""
    indices = np.asarray(indices)
    lengths = np.fromiter((len(data.input_ids[i]) for i in indices), dtype=np.int64, count=len(indices))
    return indices[np.argsort(lengths, kind="stable")]


def _trains_nothing(plan: TrainPlan, parts: tuple[str, ...], dense_names: list[str], train_routers: bool) -> bool:
    """True when ``plan`` can give no tensor a gradient: no dense part, no router, and either no
    experts in ``parts`` or a fixed plan whose every layer subset is empty."""
    if dense_names or train_routers:
        return False
    if "experts" not in parts:
        return True
    dynamic = plan.selector is not None or plan.batch_subsets is not None or plan.grad_selector is not None
    return not dynamic and plan.static_subsets is not None and all(
        sub is not None and len(sub) == 0 for sub in plan.static_subsets)


def _empty_update(mm: MoEModel, client_id: int, nonce: str, num_examples: int) -> ClientUpdate:
    L, E = mm.num_layers, mm.num_experts
    return ClientUpdate(
        client_id=client_id, num_examples=num_examples, experts={}, routers={}, dense={}, nonce=nonce,
        usage=torch.zeros(L, E), importance=torch.zeros(L, E),
        trained=torch.zeros(L, E, dtype=torch.bool), selected_counts=torch.zeros(L, E, dtype=torch.long),
        metrics={"train_loss": float("nan"), "steps": 0.0, "tokens": 0.0, "forward_flops": 0.0,
                 "backward_flops": 0.0, "peak_expert_state_max": 0.0},
        peak_expert_state=torch.zeros(L, dtype=torch.long),
    )


@torch.no_grad()
def evaluate(mm: MoEModel, data: TokenizedTexts, indices: np.ndarray, batch_size: int) -> dict[str, float]:
    """Accuracy and mean loss of ``mm.model`` on ``indices``.

    Batches are cut from the examples sorted by length: every example's prediction is independent
    of its batch mates, and similar lengths cut the padding (measured on the VADER test split:
    18,000 pad tokens for 9,196 real ones in index order)."""
    model = mm.model
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    loss_sum = 0.0
    n = 0
    confusion = None  # (K, K) counts: rows = true class, columns = predicted class
    for batch in iter_batches(data, length_sorted(data, indices), batch_size, shuffle=False):
        batch = to_device(batch, device)
        out = model(**batch)
        b = batch["labels"].shape[0]
        loss_sum += float(out.loss) * b
        pred = out.logits.argmax(-1)  # (B,)
        correct += int((pred == batch["labels"]).sum())  # one sync per batch
        num_labels = out.logits.shape[-1]
        if confusion is None:
            confusion = torch.zeros(num_labels, num_labels, dtype=torch.long, device=pred.device)
        confusion += torch.bincount(batch["labels"] * num_labels + pred, minlength=num_labels**2).view(
            num_labels, num_labels)
        n += b
    model.train(was_training)
    return {"accuracy": correct / max(n, 1), "loss": loss_sum / max(n, 1), "num_examples": float(n),
            "confusion": [] if confusion is None else confusion.cpu().tolist()}
