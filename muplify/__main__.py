"""``python -m muplify {coord-check, plan, demo, tune, transfer}`` - see muplify.cli."""
from muplify.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
