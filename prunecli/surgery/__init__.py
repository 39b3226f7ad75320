"""Masks, dependency groups, physical compression and the equivalence check."""
