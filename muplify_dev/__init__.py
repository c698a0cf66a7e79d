"""Development support shared by muplify's tests and benchmarks (not part of the installed library).

* ``muplify_dev.zoo``: the model zoo (tiny configs of HF transformers, timm, torch.nn and hand-written models) with
  their builders and declared widths.
* ``muplify_dev.oracle``: the two-width shape-diff oracle the roles are checked against.
* ``muplify_dev.optimizers``: optimizers torch does not ship that the tests and benchmarks exercise (Lion).

Both tests/ (through tests/conftest.py) and benchmarks/ (through benchmarks/common.py) import it from the repository
root; it is excluded from the wheel.
"""
