"""mimo: Masked History Modeling for autoregressive video diffusion (see README.md)."""

import os

# OpenMP threads that busy-wait between PyTorch's small CPU ops make a tiny model ~10x slower as soon as
# another process shares the cores (measured: 20.7 s vs 1.9 s per demo step on a loaded 2-core machine).
# Passive waiting costs nothing when the machine is idle. It must be set before torch loads OpenMP, so
# here; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
