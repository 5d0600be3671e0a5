"""A Grid that delivers Messages to ClientApps in this process (no Ray, no SuperLink): fast tests
of the strategy, the codec and the ClientApp together. Uses flwr internals (TaskIdentity), which
is why flwr is pinned (design.md, "Flower notes")."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity


class LoopbackGrid:
    def __init__(self, client_app, node_configs: list[dict]) -> None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.app = client_app
        self.contexts = {
            1000 + i: Context(run_id=1, node_id=1000 + i, node_config=dict(nc), state=RecordDict(), run_config={})
            for i, nc in enumerate(node_configs)
        }
        self.dead: set[int] = set()
        self.silent: set[tuple[int, str]] = set()  # (node, message type) that never gets a reply
        self.sent: list[Message] = []
        self.replies: list[Message] = []
        self.pairs: list[tuple[Message, Message]] = []  # (sent, its reply)
        self.tamper = None  # optional: reply -> reply (to inject malformed replies)
        self.tamper_types = ("train",)  # the message types whose replies tamper sees
        self.on_train = None  # optional: called with the node id before a train message is handled

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.contexts if n not in self.dead]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        del timeout
        out = []
        for msg in messages:
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            if msg.metadata.message_type == "train" and self.on_train is not None:
                self.on_train(node)
            if node in self.dead or (node, msg.metadata.message_type) in self.silent:
                continue  # a dead node never answers (the real grid times out)
            try:
                reply = self.app(msg, self.contexts[node])
            except Exception as exc:  # noqa: BLE001 (the ClientApp raised: an error reply, as the runtime sends)
                reply = Message(Error(code=0, reason=str(exc)), reply_to=msg)
            if self.tamper is not None and msg.metadata.message_type in self.tamper_types:
                reply = self.tamper(reply)
            self.replies.append(reply)
            self.pairs.append((msg, reply))
            out.append(reply)
        return out
