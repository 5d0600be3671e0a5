"""FedAvg's per-client records on the default config, encoded with the engine's codec: the download
is the full-model record the strategy sends; the upload is the record of a client that trained
every part FedAvg trains (all experts, routers, head), with the trained values of the model."""
import torch

from hfedmoe.client import ClientUpdate
from hfedmoe.client.train import trainable_dense_names
from hfedmoe.config import load_config
from hfedmoe.engines.flower.codec import model_to_record, update_to_record, wire_bytes
from hfedmoe.federation.data import load_run_dataset
from hfedmoe.federation.model import build_model
from hfedmoe.moe import wrap

cfg = load_config("configs/default.toml", ["method.name=fedavg"])
ds = load_run_dataset(cfg)
model, _, _ = build_model(cfg.model, ds.num_labels, cfg.seed)
mm = wrap(model)
L, E = mm.num_layers, mm.num_experts
dense = {n: p.detach().clone() for n, p in mm.dense_named_parameters().items() if n in set(trainable_dense_names(mm, cfg.train.trainable))}
u = ClientUpdate(0, 100, {(l, e): mm.get_expert(l, e) for l in range(L) for e in range(E)},
                 {l: mm.router_state(l) for l in range(L)}, dense, torch.rand(L, E), torch.rand(L, E),
                 torch.ones(L, E, dtype=torch.bool), torch.ones(L, E, dtype=torch.long), {"train_loss": 1.0})
print("fedavg down MB", round(wire_bytes(model_to_record(mm)) / 1e6, 2), "up MB", round(wire_bytes(update_to_record(u)) / 1e6, 2))
