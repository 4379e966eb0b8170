"""Analyses of trained models: output sparsity now; boundary distances, weight gaps, plots later."""
