"""Edge runtime (see issue: edge runtime). Must not import stamen.server or stamen.simulations."""
