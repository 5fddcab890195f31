"""Updates bound to the authenticated node: endorsement of the update key, per-reply verifiers, and
the collector refusing unsigned, impersonated, forwarded, replayed and future-version envelopes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ConfigRecord, RecordDict

from stamen.client.mods import identity_record
from stamen.deploy.keys import new_node_key
from stamen.protocols import CodecSpec, SignatureError, Signer, encode_update, keys, model_hash
from stamen.protocols.identity import endorse, load_node_key, verify_endorsement
from stamen.server.driver.collect import CollectPolicy, UpdateCollector
from stamen.server.driver.identity import NodeIdentities
from stamen.server.driver.types import Reply, TrainTask
from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec

BASE = {"w": np.zeros((2, 3), np.float32)}
HASH = model_hash(BASE)
INSTR = RoundInstructions(3, 3, 0, "dense", False, TaskSpec(), TrainSpec())


@dataclass
class _Info:
    node_id: int
    public_key: bytes


@dataclass
class _Device:
    node_id: int
    node_key: ec.EllipticCurvePrivateKey
    signer: Signer
    endorsement: bytes

    @property
    def pem(self) -> bytes:
        return self.node_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def identity(self) -> RecordDict:
        return RecordDict({keys.IDENTITY: identity_record(self.signer, self.endorsement)})

    def envelope(self, version: int = 3, sender: str | None = None, value: float = 0.5) -> bytes:
        delta = {"w": np.full((2, 3), value, np.float32)}
        name = sender or f"node-{self.node_id}"
        rng = np.random.default_rng(0)
        spec = CodecSpec.from_pipeline(["dense"])
        return encode_update(
            delta, spec, base_hash=HASH, version=version, sender=name, rng=rng, signer=self.signer
        )


def _device(node_id: int) -> _Device:
    node_key = load_node_key(new_node_key()[0])  # the OpenSSH key `deploy init` writes
    signer = Signer.generate()
    return _Device(node_id, node_key, signer, endorse(node_key, signer.public_key_bytes()))


@pytest.fixture(scope="module")
def fleet() -> tuple[_Device, _Device, NodeIdentities]:
    a, b = _device(11), _device(22)
    return a, b, NodeIdentities(lambda: [_Info(a.node_id, a.pem), _Info(b.node_id, b.pem)])


def _reply(ids: NodeIdentities, from_node: int, data: bytes, content: RecordDict) -> Reply:
    reply = Reply(f"node-{from_node}", envelope=data, metrics={keys.NUM_EXAMPLES: 4}, nbytes=len(data))
    try:
        reply.verifier = ids.verifier(from_node, content)
    except SignatureError as exc:
        reply.identity_error = str(exc)
    return reply


def _collect(*replies: Reply) -> UpdateCollector:
    tasks = [TrainTask(r.client, INSTR, BASE, None, HASH) for r in replies]
    c = UpdateCollector(BASE, tasks, CollectPolicy(require_signed=True, norm_ratio=0))
    for r in replies:
        c.add(r)
    return c


def test_endorsement_round_trip_and_tamper(fleet: tuple[_Device, _Device, NodeIdentities]) -> None:
    a, b, _ = fleet
    verify_endorsement(a.pem, a.signer.public_key_bytes(), a.endorsement)
    with pytest.raises(SignatureError, match="not endorsed"):
        verify_endorsement(b.pem, a.signer.public_key_bytes(), a.endorsement)  # A's, checked as B's
    with pytest.raises(SignatureError, match="not endorsed"):
        verify_endorsement(a.pem, b.signer.public_key_bytes(), a.endorsement)  # another update key
    with pytest.raises(SignatureError, match="malformed"):
        verify_endorsement(a.pem, b"short", a.endorsement)


def test_own_signed_update_is_accepted(fleet: tuple[_Device, _Device, NodeIdentities]) -> None:
    a, b, ids = fleet
    c = _collect(
        _reply(ids, a.node_id, a.envelope(), a.identity()), _reply(ids, b.node_id, b.envelope(), b.identity())
    )
    assert (c.stats.accepted, c.stats.rejected) == (2, 0)


@pytest.mark.parametrize(
    ("case", "kind"),
    [
        ("unsigned", "signature"),  # no identity record at all
        ("borrowed-identity", "signature"),  # B presents A's update key and endorsement
        ("forwarded", "signature"),  # B forwards A's signed envelope with its own identity
        ("named-as-other", "sender"),  # B signs with its own key but names A as the sender
        ("replay", "version"),  # B's own envelope of an earlier round
        ("future", "version"),  # B claims version 2**62
    ],
)
def test_hostile_replies_are_counted_rejections(
    fleet: tuple[_Device, _Device, NodeIdentities], case: str, kind: str
) -> None:
    a, b, ids = fleet
    data, content = {
        "unsigned": (b.envelope(), RecordDict()),
        "borrowed-identity": (a.envelope(sender=f"node-{b.node_id}"), a.identity()),
        "forwarded": (a.envelope(), b.identity()),
        "named-as-other": (b.envelope(sender=f"node-{a.node_id}"), b.identity()),
        "replay": (b.envelope(version=2), b.identity()),
        "future": (b.envelope(version=2**62), b.identity()),
    }[case]
    good = _reply(ids, a.node_id, a.envelope(), a.identity())
    c = _collect(good, _reply(ids, b.node_id, data, content))
    assert (c.stats.accepted, c.stats.rejected) == (1, 1)
    assert c.stats.kinds == [kind], c.stats.reasons


def test_plain_reply_refused_when_signatures_required() -> None:
    reply = Reply("node-5", weights={"w": np.ones((2, 3), np.float32)}, metrics={keys.NUM_EXAMPLES: 1})
    c = _collect(reply)
    assert c.stats.accepted == 0 and "plain" in c.stats.reasons[0]


def test_node_without_registered_key(fleet: tuple[_Device, _Device, NodeIdentities]) -> None:
    a, _, _ = fleet
    ids = NodeIdentities(lambda: [_Info(a.node_id, b"")])
    with pytest.raises(SignatureError, match="no registered public key"):
        ids.verifier(a.node_id, a.identity())


def test_identity_record_field_types(fleet: tuple[_Device, _Device, NodeIdentities]) -> None:
    a, _, ids = fleet
    bad = RecordDict(
        {keys.IDENTITY: ConfigRecord({keys.IDENTITY_KEY: "text", keys.IDENTITY_ENDORSEMENT: b"x"})}
    )
    with pytest.raises(SignatureError, match="must be bytes"):
        ids.verifier(a.node_id, bad)
