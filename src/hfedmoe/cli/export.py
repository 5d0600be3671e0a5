"""``hfedmoe export``: a run's newest global model as files other tools load.

* ``--peft DIR`` (LoRA runs; MoE-adapter runs, ``model.adapter = "moe"``, write their adapters in
  :mod:`hfedmoe.moe.adapter_export`'s layout instead): the global adapter as a PEFT directory with its ``task_type``
  (``CAUSAL_LM`` for causal-LM runs) and a base that loads offline: a checkpoint directory
  (``model.path``) or, for the built-in models, the run's base rebuilt and saved as
  ``DIR/base_model`` (config, tokenizer, weights); ``base_model_name_or_path`` is its absolute
  path, so ``AutoPeftModelForCausalLM.from_pretrained(DIR)`` works as long as DIR stays put.
* ``--merged DIR``: a standard transformers checkpoint (``config.json``, tokenizer,
  ``model.safetensors``) and a model card ``README.md``: LoRA merged into the experts
  (``merge_and_unload``), full fine-tuning as it is; loads with ``AutoModelForCausalLM`` or
  ``AutoModelForSequenceClassification``. A MoEfied BERT is merged back into a dense BERT
  (:mod:`hfedmoe.moe.dense_merge`): exact when every expert is active (``top_k == num_experts``,
  straight-through); with ``top_k < num_experts`` only with ``--all-experts``, which writes the
  dense model with every expert active (a different function) and records both test accuracies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hfedmoe.errors import HFedMoEError


def _last_row(run_dir: Path, rnd: int) -> dict[str, Any]:
    from hfedmoe.report.metrics import read_metrics

    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    same = [r for r in rows if int(r["round"]) == rnd]
    return {"first": rows[0] if rows else {}, "last": same[-1] if same else {"round": rnd}}


def _fresh_dir(out: Path, flag: str) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise HFedMoEError(f"{flag}: expected a new or empty directory, got {str(out)!r} (not empty)")
    return out


def export_peft_run(run_dir: Path, out: Path) -> tuple[Path, int]:
    """The LoRA adapter of the newest checkpoint, with task type and an offline base. ``(out, round)``."""
    from hfedmoe.cli.rundir import load_run, run_config
    from hfedmoe.engines.shared import export_lora_adapter
    from hfedmoe.federation.model import build_model

    cfg = run_config(run_dir)
    adapters = cfg.model.adapter == "moe"
    if cfg.model.lora_r <= 0 and not adapters:
        raise HFedMoEError(f"--peft: {run_dir} fine-tuned experts in full (model.lora_r = 0, model.adapter = 'none'); "
                           "an adapter export needs a LoRA or MoE-adapter run (use --merged for a full checkpoint)")
    out = _fresh_dir(out, "--peft")
    run = load_run(run_dir, cfg)
    if adapters:
        from hfedmoe.engines.shared import export_moe_adapters

        return export_moe_adapters(run.mm, cfg, out, _last_row(run_dir, run.round)["last"]), run.round
    if cfg.model.name == "hf":
        base = str(Path(cfg.model.path).resolve())
    else:  # the built-in bases are rebuilt from the seed; save one next to the adapter
        model, tok, _ = build_model(cfg.model, run.model.config.num_labels if cfg.model.task != "causal-lm" else 1,
                                    cfg.seed)
        base_dir = out / "base_model"
        model.save_pretrained(str(base_dir))
        tok.save_pretrained(str(base_dir))
        base = str(base_dir.resolve())
    export_lora_adapter(run.mm, cfg, out, _last_row(run_dir, run.round)["last"], base_model_name_or_path=base)
    run.tokenizer.save_pretrained(str(out))
    return out, run.round


def export_run(run_dir: Path, out: Path) -> tuple[Path, int]:
    """``hfedmoe export --peft``: see :func:`export_peft_run`."""
    return export_peft_run(run_dir, out)


def _plain_model(run, all_experts: bool):
    """The run's global model as a plain transformers model (LoRA merged, MoEfied BERT made dense)."""
    from hfedmoe.moe.lora_model import is_lora

    cfg = run.cfg
    model = run.mm.peft_model.merge_and_unload() if is_lora(run.mm) else run.model
    if cfg.model.task != "causal-lm" and cfg.model.name in ("minilm-moe", "tiny-moe"):
        from hfedmoe.moe.dense_merge import merge_moefied_bert

        exact = cfg.model.top_k == cfg.model.num_experts and cfg.model.combine == "straight-through"
        if not exact and not all_experts:
            raise HFedMoEError(
                f"--merged: expected model.top_k = model.num_experts ({cfg.model.num_experts}) with straight-through "
                f"combine for an exact dense BERT, got top_k {cfg.model.top_k}, combine {cfg.model.combine!r}; a "
                "MoEfied BERT is no transformers class: add --all-experts to write the dense BERT with every "
                "expert active (a different model, its test accuracy is measured and recorded)"
            )
        model = merge_moefied_bert(model)
    return model.eval()


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.4f}"


def _card(cfg, rows: dict[str, Any], rnd: int, description: str, extra: list[str]) -> str:
    first, last = rows["first"], rows["last"]
    lm = cfg.model.task == "causal-lm"
    d = cfg.data
    data = d.path if d.dataset == "local" else d.dataset
    lines = ["---", "library_name: transformers",
             f"pipeline_tag: {'text-generation' if lm else 'text-classification'}",
             "tags: [hfedmoe, federated-learning, mixture-of-experts]", "---", "",
             f"# {description}: federated fine-tuning with hfedmoe", "",
             f"- data: {data} (`data.partition = {d.partition}`, max {d.max_length} tokens"
             + (f", layout {d.layout}" if lm else "") + ")",
             f"- method: {cfg.method.name}, {rnd} rounds, {cfg.federation.clients_per_round} clients per round, "
             f"{cfg.train.local_steps or str(cfg.train.local_epochs) + ' epoch(s)'} local steps, lr {cfg.train.lr}, "
             f"trained: {', '.join(cfg.train.trainable)}"
             + (f", LoRA r={cfg.model.lora_r} (merged)" if cfg.model.lora_r > 0 else ""), ""]
    if lm:
        lines += ["| metric | round 0 | round %d |" % rnd, "|---|---|---|"]
        for key in ("test_perplexity", "heldout_perplexity", "client_val_perplexity_mean", "test_loss"):
            if last.get(key) is not None:
                lines.append(f"| {key.replace('_', ' ')} | {_num(first.get(key))} | {_num(last[key])} |")
        load = "AutoModelForCausalLM"
    else:
        lines += ["| metric | round 0 | round %d |" % rnd, "|---|---|---|"]
        for key in ("test_accuracy", "test_macro_f1", "test_loss"):
            if last.get(key) is not None:
                lines.append(f"| {key.replace('_', ' ')} | {_num(first.get(key))} | {_num(last[key])} |")
        load = "AutoModelForSequenceClassification"
    lines += ["", *extra, "```python", f"from transformers import {load}, AutoTokenizer",
              f"model = {load}.from_pretrained(PATH)", "tok = AutoTokenizer.from_pretrained(PATH)", "```", ""]
    return "\n".join(lines)


def export_merged_run(run_dir: Path, out: Path, all_experts: bool = False) -> tuple[Path, int]:
    """The newest global model as a standard transformers checkpoint with a model card."""
    from hfedmoe.cli.rundir import load_run, run_config

    cfg = run_config(run_dir)
    if cfg.model.adapter == "moe":
        raise HFedMoEError(f"--merged: {run_dir} is an MoE-adapter run (model.adapter = 'moe'), which is no transformers "
                           "class; export its adapters with --peft (loader: hfedmoe.moe.adapter_export.load_moe_adapters)")
    out = _fresh_dir(out, "--merged")
    run = load_run(run_dir, cfg)
    rows = _last_row(run_dir, run.round)
    extra: list[str] = []
    routed_acc = None
    dense_needed = cfg.model.task != "causal-lm" and cfg.model.name in ("minilm-moe", "tiny-moe") and (
        cfg.model.top_k != cfg.model.num_experts or cfg.model.combine != "straight-through")
    if dense_needed and all_experts:
        routed_acc = _test_accuracy(run)
    model = _plain_model(run, all_experts)
    if cfg.model.task != "causal-lm":
        from hfedmoe.federation.data import load_run_dataset

        names = load_run_dataset(cfg).label_names
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {n: i for i, n in enumerate(names)}
    if routed_acc is not None:
        dense_acc = _test_accuracy(run, model)
        extra += [f"Dense BERT with every expert active (`--all-experts`): the run's model routed each token to "
                  f"{cfg.model.top_k} of {cfg.model.num_experts} experts; test accuracy routed {routed_acc:.4f}, "
                  f"this dense model {dense_acc:.4f}.", ""]
    model.save_pretrained(str(out))
    run.tokenizer.save_pretrained(str(out))
    (out / "README.md").write_text(_card(cfg, rows, run.round, f"{cfg.model.name} ({type(model).__name__})", extra))
    info = {"round": run.round, "run": str(Path(run_dir).resolve()), **{k: v for k, v in rows["last"].items()
            if isinstance(v, (int, float, str)) and k.startswith(("test_", "heldout_"))}}
    if routed_acc is not None:
        info["routed_test_accuracy"] = routed_acc
    (out / "hfedmoe_export.json").write_text(json.dumps(info, indent=2) + "\n")
    return out, run.round


def _test_accuracy(run, model=None) -> float:
    """Accuracy of ``model`` (default: the run's) on the run's test set."""
    import torch

    from hfedmoe.data.batches import iter_batches
    from hfedmoe.federation.data import build_federation

    fed = build_federation(run.cfg, run.tokenizer)
    model = (model if model is not None else run.model).eval()
    right = 0
    with torch.no_grad():
        for batch in iter_batches(fed.tokens, fed.test_idx, run.cfg.train.eval_batch_size, shuffle=False):
            labels = batch.pop("labels")
            right += int((model(**batch).logits.argmax(-1) == labels).sum())
    return right / max(len(fed.test_idx), 1)
