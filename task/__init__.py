"""What every node of a federation agrees on (the layer above :mod:`stamen.protocols`).

- :mod:`.settings` / :mod:`.settings_base`: the one typed config tree (TOML, ``--set``, wire records);
- :mod:`.spec`: what the server sends each round (:class:`~.spec.TaskSpec`, :class:`~.spec.TrainSpec`);
- :mod:`.models`: the model factory (architectures, LoRA / LoRA-SB adapters), :mod:`.weights`;
- :mod:`.data`: the data a node trains on and the :class:`~.data.DataSource` interface;
- :mod:`.bristle`: Bristle's per-node algorithm (prioritizer, integrator, peer rounds);
- :mod:`.seeds`, :mod:`.cache`.
"""
