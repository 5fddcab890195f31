"""Every string key that crosses the wire between ServerApp and ClientApp.

Kept in one place so that the server, the client, the mods and the engines cannot drift apart.
"""

from __future__ import annotations

# --- RecordDict keys -------------------------------------------------------------------------
ARRAYS = "arrays"  # ArrayRecord: the global model (server -> client) or a plain Flower reply
CONFIG = "config"  # ConfigRecord: per-round instructions (server -> client)
METRICS = "metrics"  # MetricRecord: client reply metrics
UPDATE = "update"  # ArrayRecord holding one Array whose data is a packed Envelope
UPDATE_ARRAY = "envelope"  # the Array's key inside the UPDATE record
ENVELOPE_STYPE = "stamen.envelope/1"  # Array.stype marking a packed Envelope

# --- ConfigRecord keys (server -> client, every round) ---------------------------------------
SERVER_ROUND = "server-round"  # injected by Flower's convention as well
CODEC_SPEC = "codec-spec"
MODEL_HASH = "model-hash"
MODEL_VERSION = "model-version"  # int: the version the client trains from (its envelope must name it)
TASK = "task"  # prefix of the flat TaskSpec entries ("task.model", "task.lora.rank"; stamen.task.spec)
TRAIN = "train"  # prefix of the flat TrainSpec entries ("train.lr", "train.sparse.density")
SEED = "seed"
ERROR_FEEDBACK = "error-feedback"  # bool: client keeps the compression residual across rounds

# --- MetricRecord keys (client -> server) ----------------------------------------------------
NUM_EXAMPLES = "num-examples"  # Flower's default weighting key
SENDER = "sender"  # ConfigRecord in a query reply: the client key the node names in its envelopes
TRAIN_LOSS = "train-loss"
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"
BYTES_UP = "bytes-up"
EPSILON = "epsilon"  # client-reported cumulative ε (local DP, DP-SGD)
DP_ROUNDS = "dp-rounds"  # local DP: rounds this client has released a noised update
DP_STEPS = "dp-steps"  # DP-SGD: noisy steps this client has taken (kept on the client, never sent)
DOWNLINK = "downlink"  # ArrayRecord: a signed delta envelope for an edge device (runtime = "edge")
IDENTITY = "stamen.identity"  # ConfigRecord in a train reply: the device's update key + its endorsement
IDENTITY_KEY = "update-key"  # bytes: raw Ed25519 public key the envelope is signed with
IDENTITY_ENDORSEMENT = "endorsement"  # bytes: the node key's ECDSA signature over it
BASE = "stamen.base"  # ConfigRecord in a train reply: {"hash": the model hash the client trained from}

# --- Cached downlink (clients.downlink = "cached"; stamen.protocols.patch) ----------------------
PATCH = "stamen.patch"  # ArrayRecord: the changed tensors/entries since the client's held model
PATCH_META = "stamen.patch.meta"  # ConfigRecord: {PATCH_KIND, PATCH_BASE, PATCH_TARGET}
PATCH_KIND = "kind"  # "cache" (keep the full model sent) or "patch" (apply to the held model)
PATCH_BASE = "base"  # model_hash the patch applies to
PATCH_TARGET = "target"  # model_hash after applying
CACHE_MISS = "stamen.cache-miss"  # ConfigRecord in a train reply: {CACHE_MISS_REASON}: no such base
CACHE_MISS_REASON = "reason"

# --- Bristle peer mode (aggregation.mode = "peer"; the server only relays) ---------------------
PEER_INBOX = "bristle.inbox"  # ArrayRecord: "<partition id>" -> the (C, F) layer that peer shared last round
PEER_CONFIG = "bristle.peer"  # ConfigRecord: prioritizer settings + "classes.<id>": each sender's classes
PEER_CLASSES = "bristle-classes"  # MetricRecord list[int] in a train reply: the node's declared classes

# --- Envelope meta keys (signed edge deltas; stamen.protocols.delta) ------------------------------
META_TARGET = "target"  # model_hash of what the device holds after applying the delta
META_MODEL = "model"  # model id; a device refuses a delta for another model
META_KIND = (
    "kind"  # "replace": the payload is the whole model, not a delta (a device the server lost track of)
)
KIND_REPLACE = "replace"
HELD = "stamen.held"  # ConfigRecord in a train reply: {"hash", "version"} a device holds (cannot apply)

# --- node_config keys (Flower) ---------------------------------------------------------------
NODE_PARTITION_ID = "partition-id"
NODE_NUM_PARTITIONS = "num-partitions"
