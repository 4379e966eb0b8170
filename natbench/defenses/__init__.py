"""Base defenses: one per file, exactly one per run (see natbench.compose)."""
