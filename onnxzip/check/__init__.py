"""Proof: the equivalence check, fidelity against the originals, the per-layer merge check."""
