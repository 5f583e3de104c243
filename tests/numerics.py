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


def fingerprint() -> dict[str, str]:
    """What decides the last bits of a seeded CPU run here: the CPU (vendor, family, model and its
    vector extensions: the pins above narrow the code paths but do not make AMD and Intel, or two
    cache sizes, sum in the same order), the kernel pins, and the numeric libraries' versions.
    Two machines with the same fingerprint reproduce a golden job bit for bit."""
    import platform

    import numpy
    import torch

    info: dict[str, str] = {}
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key in ("vendor_id", "cpu family", "model", "model name") and key not in info:
                info[key] = value
            elif key == "flags" and "flags" not in info:
                info["flags"] = " ".join(sorted(f for f in value.split()
                                                if f.startswith(("avx", "fma", "sse", "amx"))))
    except OSError:
        info["processor"] = platform.processor()
    info.update({"machine": platform.machine(), "torch": torch.__version__,
                 "numpy": numpy.__version__, "threads": str(torch.get_num_threads()),
                 "kernels": " ".join(f"{k}={os.environ.get(k, '')}" for k in sorted(KERNELS))})
    return info
