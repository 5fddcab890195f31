"""The device side of a deployment: ``stamen device init`` provisions a device (edge store, keys,
trust anchor, one config file) and ``stamen device run`` is the long-lived daemon (a supervised
Flower SuperNode running the stamen ClientApp). See docs/deployment.md."""
