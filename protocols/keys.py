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
TASK = "task"  # JSON string: dataset, partition, model, seeds (see stamen.client.task)
TRAIN = "train"  # JSON string: trainer name + hyper-parameters
SEED = "seed"
ERROR_FEEDBACK = "error-feedback"  # bool: client keeps the compression residual across rounds

# --- MetricRecord keys (client -> server) ----------------------------------------------------
NUM_EXAMPLES = "num-examples"  # Flower's default weighting key
PARTITION_ID = "partition-id"
TRAIN_LOSS = "train-loss"
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"
BYTES_UP = "bytes-up"
EPSILON = "epsilon"  # client-reported cumulative ε (local DP, DP-SGD)
DOWNLINK = "downlink"  # ArrayRecord: a signed delta envelope for an edge device (runtime = "edge")
EDGE_ROOT = "edge-root"  # str: directory of the simulated devices' stores (node_config may override)
EDGE_TRUST = "edge-trust"  # str: path of the public key the devices trust
BASE = "stamen.base"  # ConfigRecord in a train reply: {"hash": the model hash the client trained from}

# --- Bristle peer mode (aggregation.mode = "peer"; the server only relays) ---------------------
PEER_INBOX = "bristle.inbox"  # ArrayRecord: "<partition id>" -> the (C, F) layer that peer shared last round
PEER_CONFIG = "bristle.peer"  # ConfigRecord: prioritizer settings + "classes.<id>": each sender's classes
PEER_CLASSES = "bristle-classes"  # MetricRecord list[int] in a train reply: the node's declared classes

# --- node_config keys (Flower) ---------------------------------------------------------------
NODE_PARTITION_ID = "partition-id"
NODE_NUM_PARTITIONS = "num-partitions"
