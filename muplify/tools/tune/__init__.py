"""``muplify.tune``: sweep μP hyperparameters on a small proxy with Optuna, then transfer them to the target.

    def objective(model, optimizer, report):       # your own training loop on the proxy
        ...; report(step, val_loss)                 # lets the pruner stop hopeless trials early
        return val_loss                             # lower is better

    result = muplify.tune(make_model, width=64, objective=objective, optimizer=torch.optim.AdamW,
                          trials=64, storage="sqlite:///tune.db", workers=2)
    mu = muplify(make_model(1024), base_width=64, hp=result.best["hp"])                   # the transfer
    opt = mu.optimizer(torch.optim.AdamW, lr=result.best["lr"], **result.best["optimizer"])

Each trial builds ``make_model(width)`` under its own seed, muplifies it with ``base_width=width`` (so the proxy *is*
the base model and what is tuned is exactly what transfers), makes ``mu.optimizer(optimizer, lr=..., **options)``
and calls the objective.  Optuna does the rest: the study, the sampler (TPE by default), the pruner (median), the
storage (a SQLite file by default; any Optuna storage URL, e.g. PostgreSQL, for workers on several machines).
The search space, its default ranges, how workers share the cores and how a sweep resumes are in ``docs/tune.md``.

The package, one module per job:

* :mod:`.space`: search-space entries (``LogUniform``, ``Choice``, ...), the default space of a proxy, parsing;
* :mod:`.trial`: one trial (seeds, the proxy build :func:`transfer`, the objective and its reporter);
* :mod:`.samplers`: samplers and pruners by name; :mod:`.storage`: the storage, the study, trial states, recovery;
* :mod:`.workers`: running trials here or in worker processes, the progress bar;
* :mod:`.sweep`: one sweep (one study at one width over one box);
* :mod:`.phases`: :func:`tune` — the global sweep, the refinement, telescoping to larger widths, re-evaluation;
* :mod:`.result`: :class:`TuneResult`, the best, ``best.json``, :func:`load_result`;
* :mod:`.check`: ``result.check_transfer(width=...)``; :mod:`.plots`: the PNGs.
"""
from __future__ import annotations

from .result import Convergence, PhaseRecord, ReevalRecord, TrialRecord, TuneResult, load_result  # noqa: F401
from .samplers import PRUNERS, SAMPLERS, SamplerName, make_pruner, make_sampler
from .space import (Choice, Dist, Fixed, IntRange, LogUniform, TuneError, Uniform, default_space,  # noqa: F401
                    parse_dist)
from .storage import COUNTED, TrialStateName, open_storage, trial_state  # noqa: F401
from .phases import narrow, tune  # noqa: F401
from .trial import (DEFAULT_STORAGE, DEFAULT_STUDY, FAILURE_ATTR, MAX_RERUNS, SEED_ATTR, WORKER_ATTR,  # noqa: F401
                    Diverged, seed_everything, transfer)
from .workers import cores  # noqa: F401

__all__ = ["tune", "transfer", "load_result", "default_space", "parse_dist", "TuneResult", "TrialRecord",
           "LogUniform", "Uniform", "IntRange", "Choice", "Fixed", "TuneError", "Diverged", "DEFAULT_STORAGE",
           "DEFAULT_STUDY"]
