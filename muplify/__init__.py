"""muplify: the Maximal Update Parametrization (μP) for any PyTorch model, with no edits to the model's code.

    mu = muplify(model, base_width=256)
    opt = mu.optimizer(torch.optim.AdamW, lr=3e-3)

Pipeline: capture (torch.export) -> width analysis (sympy) -> plan -> rewrite (hooks, init) -> optimizer.
"""
from .core import MuplifiedModule, analyze, is_muplified, muplify
from .errors import CaptureError, MuplifyError, OptimizerRuleError, PlanError, WidthError
from .optim import register_rule
from .plan import ForwardMultiplier, ParamPlan, Plan
from .tools.coord_check import coord_check

__all__ = [
    "muplify", "analyze", "is_muplified", "MuplifiedModule", "Plan", "ParamPlan", "ForwardMultiplier",
    "register_rule", "coord_check", "MuplifyError", "CaptureError", "WidthError", "PlanError", "OptimizerRuleError",
]
__version__ = "0.1.0"

