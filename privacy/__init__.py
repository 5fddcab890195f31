"""Differential-privacy accounting shared by server and clients (the layer above protocols).

- :mod:`.accounting`: RDP / PRV accountants of the (subsampled) Gaussian mechanism, calibration;
- :mod:`.local`: local DP (a client's whole clipped update);
- :mod:`.dp_sgd`: DP-SGD's noise for a federation;
- :mod:`.rqm_rdp`: the exact Rényi-DP accountant of randomized quantization (RQM).

The mechanisms live where they run: central DP in :mod:`stamen.server.privacy.central`, local DP in
:mod:`stamen.client.privacy`, DP-SGD in :mod:`stamen.client.trainers.dp_sgd`, RQM in the codec.
"""
