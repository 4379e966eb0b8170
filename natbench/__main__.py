"""``python -m natbench ...`` (what ``torchrun --nproc-per-node N -m natbench run ...`` starts per rank)."""
import sys

from natbench.cli import main

sys.exit(main())
