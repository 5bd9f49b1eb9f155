"""The streaming pass and what is computed from its results."""
