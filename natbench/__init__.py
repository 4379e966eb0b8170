"""natbench: a declarative, multi-task benchmark harness for adversarial robustness."""

__version__ = "0.1.0"
