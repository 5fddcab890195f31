"""A ClientApp for tests: stamen's own, except on nodes whose node config names a ``hostile`` mode.

- ``hostile="replay"``: trains honestly in its first round and keeps that reply; from then on it sends
  the kept, validly signed update again (a replay of an old model version).
- ``hostile="future"``: re-signs its honest update with its own key, claiming model version 2**62.

Impersonation needs no code: a node started with another node's ``signing-key`` and ``endorsement``
presents that node's identity under its own authenticated node key. Shipped inside the test's FAB
(the SuperNodes import it from the installed app), so it never reaches the stamen package.
"""

from __future__ import annotations

import dataclasses

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from stamen.client.app import configured_node, make_client_app
from stamen.protocols import keys
from stamen.protocols.envelope import pack, unpack
from stamen.protocols.flower import envelope_from_record, envelope_record

KEPT = "hostile.kept-update"
inner = make_client_app(configured_node)
app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """stamen's train handler, then the node's hostile rewrite of the reply."""
    out = inner(msg, context)
    mode = str(context.node_config.get("hostile", ""))
    if out.has_error() or keys.UPDATE not in out.content.array_records:
        return out
    if mode == "replay":
        kept = context.state.array_records.get(KEPT)
        if kept is None:
            context.state[KEPT] = out.content.array_records[keys.UPDATE]
        else:
            out.content[keys.UPDATE] = kept
    elif mode == "future":
        data = envelope_from_record(out.content.array_records[keys.UPDATE])
        assert data is not None
        claim = dataclasses.replace(unpack(data), version=2**62)
        out.content[keys.UPDATE] = envelope_record(pack(claim, configured_node(context).signer))
    return out


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """stamen's evaluate handler."""
    return inner(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """stamen's query handler."""
    return inner(msg, context)
