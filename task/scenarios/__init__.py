"""stamen package."""
