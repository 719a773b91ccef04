"""dynapose4d: one image to 4D Gaussians (static 3DGS -> category-agnostic pose -> pose-aligned deformation).

Importing the package before torch sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy: with
OpenMP's default spin-waiting, any other busy process on a small CPU machine (a DDP peer, a data worker)
stalls every parallel region of the CPU rasterizer by ~10-50x. It has no effect once torch is loaded.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
