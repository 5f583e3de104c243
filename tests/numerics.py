"""Pin torch's CPU kernels to one instruction set, so seeded results are the same on every
machine of this kind, whichever vector units its CPU has.

Imported first by `tests/conftest.py` and `tests/golden/jobs.py`, before torch loads (the settings
are read once, when each library starts). Measured: the golden jobs stored on one machine moved on
an AVX-512 EPYC (l0's best drop −0.009 → −0.016) because MKL, oneDNN and ATen's own vectorised
loops each picked AVX-512 code with another summation order; capped at AVX2 (which every x86
machine here has) they pick the same code everywhere. Subprocesses the tests start inherit them.
"""

from __future__ import annotations

import os

KERNELS = {
    "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility: the AVX2 code branch
    "DNNL_MAX_CPU_ISA": "AVX2",  # oneDNN (convolutions)
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels
}

for _name, _value in KERNELS.items():
    os.environ.setdefault(_name, _value)
