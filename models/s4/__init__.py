"""S4 and S4D: HiPPO/NPLR math, SSM kernels, kernel ops with their backends, and the sequence layer."""
