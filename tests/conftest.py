"""pytest setup shared by muplify's tests.

* Puts the repository root on sys.path (for ``import muplify`` and ``import muplify_dev``: the zoo, the oracle and the
  torchvision stand-in shared with benchmarks/) and tests/ (for the distributed helpers ``dist_worker``/``dist_jobs``).
* timm imports torchvision at import time.  When ``import torchvision`` fails here (no CPU wheel matching this torch),
  muplify_dev/torchvision_shim makes a minimal stand-in visible to timm's modules only; a working torchvision is always
  preferred.  See tests/README-timm.md.
"""
import os
import sys

_TESTS = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_TESTS)
for _p in (_TESTS, _ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from muplify_dev import torchvision_shim  # noqa: E402

TORCHVISION_SHIM = torchvision_shim.install()


def pytest_report_header(config):
    return "torchvision for timm: " + ("muplify stand-in (muplify_dev/torchvision_shim)" if TORCHVISION_SHIM else "real")
