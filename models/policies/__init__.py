"""Embedding-dimension policies (see models.policy for the interface)."""
