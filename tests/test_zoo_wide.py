"""Issue 8's acceptance test: every architecture of the zoo, called the way a new user calls muplify.

Per model (muplify_dev/zoo.py, tiny configs, random init):

* the headline call ``muplify(model, base_width=...)`` without example inputs works (entries with ``bare=False``
  have no submodule to build inputs from: the bare call must say what to pass, the explicit call must work);
* the roles equal the two-width shape-diff oracle (muplify_dev/oracle.py);
* the width muplify reports is the model's declared width (``ZooEntry.width_attr``: the config's hidden size, the
  timm width attribute), and it says where it took it from;
* no parameter rests on an unmarked guess: every role that does not come from graph evidence has
  ``decided_by="guess: ..."`` and is named in one ``UserWarning``;
* base-width identity: at ``base_width`` = the declared width, bit-exact outputs and 3 AdamW steps.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.utils._pytree as pytree

import muplify.core as core
from muplify import CaptureError, muplify
from muplify_dev.oracle import oracle_roles
from muplify_dev.zoo import ZOO, ZOO_NAMES, build, declared_width, widths_for


def loss_of(out) -> torch.Tensor:
    """Sum of squares of every floating tensor the model returns (logits, hidden states, embeddings, ...)."""
    leaves = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return sum(t.float().pow(2).mean() for t in leaves)


class Spy:
    """Records the WidthAnalysis of a muplify() call (the call itself is the user's headline call)."""

    def __init__(self, monkeypatch):
        self.analyses = []
        real = core.analyse

        def spy(*args, **kwargs):
            wa = real(*args, **kwargs)
            self.analyses.append(wa)
            return wa

        monkeypatch.setattr(core, "analyse", spy)

    @property
    def wa(self):
        assert len(self.analyses) == 1
        return self.analyses[0]


def headline(name: str, model, args, kwargs, base: int, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if ZOO[name].bare:
            mu = muplify(model, base_width=base, **kw)
        else:
            mu = muplify(model, base_width=base, example_inputs=args, example_kwargs=kwargs, **kw)
    return mu, [w for w in caught if issubclass(w.category, UserWarning)]


# Known wrong, kept visible: a (1, N, w) positional table used sliced (``pos[:, :T]``) has its N rows read as scaling
# at one width (N = 32 = w/2 here, no finiteness evidence reaches the sliced-off rows), so it stays `vector` where the
# oracle says `input`.  base= (two widths) reads it right.  strict: the test fails once the analysis is fixed.
KNOWN_WRONG: dict[str, str] = {}  # name -> why the one-width reading is wrong (a strict xfail)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_WRONG[n]))
                                  if n in KNOWN_WRONG else n for n in ZOO_NAMES])
def test_headline_call_roles_width_and_guesses(name, monkeypatch):
    entry = ZOO[name]
    base, wide = widths_for(name)
    expected = oracle_roles(name, base, wide)
    model, args, kwargs = build(name, wide)
    spy = Spy(monkeypatch)
    mu, caught = headline(name, model, args, kwargs, base)
    wa = spy.wa

    got = {n: mu.plan[n].role for n in expected}
    assert got == expected, {n: (got[n], expected[n]) for n in expected if got[n] != expected[n]}
    assert mu.plan.width_mult == wide / base

    if entry.width_attr:
        assert mu.plan.width == declared_width(name, model) == wide
        assert wa.width_source != "most-used", wa.width_source
    else:
        assert mu.plan.width == wide and wa.width_source == "most-used"
    assert wa.scaling_dims[0].root == wa.width_root and wa.scaling_dims[0].size == wa.width_size
    assert all(s.expr.subs(wa.width_symbol, wa.width_size) == s.size for s in wa.scaling_dims)

    # every role rests on graph evidence or is marked (decided_by) and named in one warning
    guessed = wa.guessed_params()
    for n, pd in wa.params.items():
        plan_guess = str(getattr(mu.plan[n], "decided_by", "")).startswith("guess") or \
            "role guessed from its shape" in mu.plan[n].note
        assert not plan_guess or n in guessed, (n, mu.plan[n].note)
        if any(r in wa.guesses for r in pd.axis_roots):
            assert n in guessed, n
    guess_warnings = [w for w in caught if "guessed the role" in str(w.message)]
    assert len(guess_warnings) == (1 if guessed else 0), [str(w.message) for w in caught]
    if guessed:
        assert f"{len(guessed)} parameter(s)" in str(guess_warnings[0].message)
    width_warnings = [w for w in caught if "most parameter axes use" in str(w.message)]
    other_sizes = {s.size for s in wa.scaling_dims} - {wa.width_size}
    assert len(width_warnings) == (1 if wa.width_source == "most-used" and other_sizes else 0)


@pytest.mark.parametrize("name", [n for n in ZOO_NAMES if not ZOO[n].bare])
def test_bare_call_says_what_to_pass(name):
    model, _, _ = build(name, widths_for(name)[1])
    with pytest.raises(CaptureError, match=r"pass example_inputs=\(\.\.\.\)"):
        muplify(model, base_width=widths_for(name)[0])


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_base_width_identity(name):
    """muplify(model_at_w, base_width=w) with w the declared width: same outputs, same 3 AdamW steps."""
    base, _ = widths_for(name)
    torch.manual_seed(0)
    model, args, kwargs = build(name, base)
    torch.manual_seed(0)
    ref = build(name, base)[0]  # not deepcopy: modules with utils.weight_norm cannot be deep-copied
    if ZOO[name].width_attr:
        assert declared_width(name, model) == base
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mu = muplify(model, base_width=base, example_inputs=args, example_kwargs=kwargs)
    assert mu.plan.width == base and mu.plan.width_mult == 1.0
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.1)
    opt_mu = mu.optimizer(torch.optim.AdamW, lr=1e-3, weight_decay=0.1)
    for step in range(3):
        torch.manual_seed(step)
        l_ref = loss_of(ref(*args, **kwargs))
        torch.manual_seed(step)
        l_mu = loss_of(mu(*args, **kwargs))
        assert l_ref.item() == l_mu.item(), (step, l_ref.item(), l_mu.item())
        l_ref.backward()
        l_mu.backward()
        opt_ref.step()
        opt_mu.step()
        opt_ref.zero_grad()
        opt_mu.zero_grad()
    for (n, a), (_, b) in zip(ref.state_dict().items(), mu.state_dict().items()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_base_route_and_export(name):
    """The exact route (``base=`` a meta model at the base width) agrees with the oracle with no guess left but the
    named fused-rows one, and ``to_standard()`` (every multiplier folded into the weights) computes what the μP
    model computes."""
    base, wide = widths_for(name)
    torch.manual_seed(0)
    model, args, kwargs = build(name, wide)
    with torch.device("meta"):
        base_model = build(name, base)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mu = muplify(model, base=base_model, example_inputs=args, example_kwargs=kwargs)
    expected = oracle_roles(name, base, wide)
    got = {n: mu.plan[n].role for n in expected}
    assert got == expected, {n: (got[n], expected[n]) for n in expected if got[n] != expected[n]}
    # the one guess the exact route keeps: a fused projection whose row blocks scale differently (Mamba's x_proj,
    # DeepSeek's kv_a_proj_with_mqa: scaling rows + fixed rows) has one role for the whole matrix, named (issue 18)
    assert mu.plan.base_width == base and not [n for n, p in mu.plan.items()
                                               if p.guessed and "fused rows" not in p.decided_by]
    mu.eval()
    std = mu.to_standard()
    assert type(std) is mu._mup_orig_class
    with torch.no_grad():
        torch.manual_seed(1)
        want = [t for t in pytree.tree_leaves(mu(*args, **kwargs)) if isinstance(t, torch.Tensor)]
        torch.manual_seed(1)
        got_out = [t for t in pytree.tree_leaves(std(*args, **kwargs)) if isinstance(t, torch.Tensor)]
    assert len(want) == len(got_out)
    for a, b in zip(want, got_out):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
