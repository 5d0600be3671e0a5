"""What a pretrained benchmark MoE learnt: per-domain perplexity and routing specialisation."""

from __future__ import annotations

import math

import numpy as np
import torch


def usage_entropy(expert_ids: np.ndarray, num_experts: int) -> float:
    """Entropy of the expert-assignment histogram over ``log(num_experts)``: 1 = perfectly even
    load, 0 = every token on one expert."""
    counts = np.bincount(expert_ids.ravel(), minlength=num_experts).astype(np.float64)
    share = counts / counts.sum()
    nz = share[share > 0]
    return float(-(nz * np.log(nz)).sum() / math.log(num_experts))


@torch.no_grad()
def routing_report(model, held: list[np.ndarray], domains: list[str]) -> dict:
    """On each domain's held-out windows ``(n, S)``: perplexity, and per MoE layer the normalised
    mutual information of (domain, top-1 expert) over tokens and the usage entropy of the top-k
    assignments. NMI near 0: routing does not follow domains; near 1: one expert set per domain."""
    from sklearn.metrics import normalized_mutual_info_score

    was_training = model.training
    model.eval()
    ppl: dict[str, float] = {}
    top1: list[list[np.ndarray]] = []  # [layer][domain] -> (n*S,)
    topk: list[list[np.ndarray]] = []
    k = model.config.num_experts_per_tok
    for d, windows in zip(domains, held):
        ids = torch.from_numpy(windows)  # (n, S)
        out = model(input_ids=ids, output_router_logits=True)
        logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])  # (n*(S-1), V)
        loss = torch.nn.functional.cross_entropy(logits, ids[:, 1:].reshape(-1))
        ppl[d] = float(torch.exp(loss))
        for layer, router in enumerate(out.router_logits):  # (n*S, E) each
            if len(top1) <= layer:
                top1.append([])
                topk.append([])
            top1[layer].append(router.argmax(-1).numpy())
            topk[layer].append(router.topk(k, dim=-1).indices.numpy())
    model.train(was_training)
    num_experts = out.router_logits[0].shape[-1]
    nmi, entropy = [], []
    for layer in range(len(top1)):
        experts = np.concatenate(top1[layer])
        labels = np.concatenate([np.full(len(e), i) for i, e in enumerate(top1[layer])])
        nmi.append(round(float(normalized_mutual_info_score(labels, experts)), 4))
        entropy.append(round(usage_entropy(np.concatenate(topk[layer]), num_experts), 4))
    mean_loss = float(np.mean([math.log(v) for v in ppl.values()]))
    return {"perplexity": {d: round(v, 2) for d, v in ppl.items()}, "perplexity_mean": round(math.exp(mean_loss), 2),
            "nmi_domain_expert": nmi, "usage_entropy": entropy, "num_experts": num_experts, "top_k": k}
