"""Errors muplify raises.  Each message says what went wrong and what the user can do about it."""


class MuplifyError(Exception):
    """Base class of every error muplify raises on bad input."""


class CaptureError(MuplifyError):
    """The model's forward could not be captured as a graph."""


class WidthError(MuplifyError):
    """No width dimension, or no unambiguous one, could be found."""


class PlanError(MuplifyError):
    """A plan does not fit the model it is applied to, or an override is invalid."""


class RolesMismatchError(PlanError):
    """The model reads some parameters in other roles than the proxy the hyperparameters were tuned on
    (``hp["tuned_roles"]``): per-role values would act on other weights."""


class OptimizerRuleError(MuplifyError):
    """The optimizer class has no known μP rule."""


def user_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside muplify, so that a warning points at the user's call."""
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    f, level = sys._getframe(1), 1
    while f is not None and os.path.abspath(f.f_code.co_filename).startswith(here):
        f, level = f.f_back, level + 1
    return level
