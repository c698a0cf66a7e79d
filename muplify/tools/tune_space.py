"""Kept for the generated API reference and old imports: the search space lives in :mod:`muplify.tools.tune.space`."""
from .tune.space import *  # noqa: F401,F403
from .tune.space import Choice, Fixed, IntRange, LogUniform, TuneError, Uniform, default_space, parse_dist  # noqa: F401
