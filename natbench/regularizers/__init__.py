"""Regularizers: additive terms composed on top of exactly one base defense."""
