"""Errors muplify raises.  Each message says what went wrong and what the user can do about it."""


class MuplifyError(Exception):
    """Base class of every error muplify raises on bad input."""


class CaptureError(MuplifyError):
    """The model's forward could not be captured as a graph."""


class WidthError(MuplifyError):
    """No width dimension, or no unambiguous one, could be found."""


class PlanError(MuplifyError):
    """A plan does not fit the model it is applied to, or an override is invalid."""


class OptimizerRuleError(MuplifyError):
    """The optimizer class has no known μP rule."""
