"""muplify: the Maximal Update Parametrization (μP) for any PyTorch model, with no edits to the model's code.

    mu = muplify(model, base_width=256)
    opt = mu.optimizer(torch.optim.AdamW, lr=3e-3)

Pipeline: capture (torch.export) -> width analysis (sympy) -> classify (the plan's facts) -> policy (the μP rules)
-> rewrite (hooks, init) -> optimizer.
"""
from .core import MuplifiedModule, analyze, is_muplified, muplify
from .errors import CaptureError, MuplifyError, OptimizerRuleError, PlanError, RolesMismatchError, WidthError
from .optim import CombinedOptimizer, register_family, register_rule
from .options import HyperParams, Options
from .plan import ParamPlan, Plan, Site
from .policy import ForwardMultiplier, OptimizerFamily

__all__ = [
    "muplify", "analyze", "is_muplified", "MuplifiedModule", "Plan", "ParamPlan", "Site", "Options", "HyperParams",
    "ForwardMultiplier", "OptimizerFamily", "CombinedOptimizer", "register_rule", "register_family", "coord_check",
    "MuplifyError", "CaptureError", "WidthError", "PlanError", "OptimizerRuleError", "RolesMismatchError",
    "tune",
]
__version__ = "0.1.0"


def __getattr__(name):
    # the tools sit above the pipeline and import it: importing them here would run the layers backwards (and tune
    # pulls in optuna), so they load on first use
    if name == "coord_check":
        from .tools.coord_check import coord_check

        return coord_check
    if name == "tune":
        from .tools.tune import tune

        return tune
    raise AttributeError(f"module 'muplify' has no attribute {name!r}")
