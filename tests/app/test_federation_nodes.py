"""server.federation: which node a reply is about (the SuperLink answers for unavailable ones)."""

from __future__ import annotations

from flwr.app import Error, Message, MessageType, RecordDict

from server.checks import client_row, node_of

from .messages import incoming, reply_from


def test_an_error_the_superlink_makes_for_a_dead_node_is_that_nodes() -> None:
    # Observed in tests/deploy (flwr 1.41): a SuperNode killed mid-round gets an error reply
    # "Node Unavailable" whose source is the SuperLink (node 1), not the dead node.
    dead = 2077556398197841893
    instruction = incoming(RecordDict(), MessageType.TRAIN, message_id="to-dead", node=dead)
    err = Message(Error(code=0, reason="Node Unavailable"), reply_to=instruction)
    err.metadata.__dict__["_src_node_id"] = 1
    sent_to = {"to-dead": dead}
    assert node_of(err, sent_to) == dead
    assert client_row(err, sent_to) == {"node": dead}
    ok = reply_from(7, {"num-examples": 3})
    assert node_of(ok, {}) == 7  # an unknown instruction: the reply's own source
