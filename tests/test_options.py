"""One typed options object: :class:`muplify.Options` validates itself from its annotations (a ``Literal`` lists the
allowed values; no hand-written tuples), has no dict-style access, and ``muplify``/``analyze`` build it once from
their keyword options, naming an unknown option and the valid ones."""
from __future__ import annotations

import dataclasses
import typing

import pytest

from muplify import MuplifyError, Options, analyze, muplify
from muplify.models import MLP


def _literal_fields():
    hints = typing.get_type_hints(Options)
    for f in dataclasses.fields(Options):
        tp = hints[f.name]
        args = typing.get_args(tp)
        lits = [a for a in ([tp] if typing.get_origin(tp) is typing.Literal else args)
                if typing.get_origin(a) is typing.Literal]
        if lits:
            yield f.name, typing.get_args(lits[0])


@pytest.mark.parametrize("name, allowed", list(_literal_fields()))
def test_every_literal_value_is_accepted_and_anything_else_refused_by_name(name, allowed):
    for v in allowed:
        assert getattr(Options(**{name: v}), name) == v
    with pytest.raises(MuplifyError, match=f"{name} must be .*{allowed[0]!r}.*got 'nonsense'"):
        Options(**{name: "nonsense"})


@pytest.mark.parametrize("kw, match", [({"readout_zero_init": 1}, "readout_zero_init must be True or False"),
                                       ({"base_depth": 0}, "base_depth must be a positive int"),
                                       ({"base_depth": 2.5}, "base_depth must be an int or None"),
                                       ({"depth_alpha": 1.5}, r"depth_alpha must be in \(0, 1\]"),
                                       ({"depth_alpha": True}, "depth_alpha must be a number"),
                                       ({"depth": 4}, "depth= needs base_depth="),
                                       ({"parametrization": "ntk"}, "parametrization must be one of")])
def test_values_the_type_alone_does_not_rule_out(kw, match):
    with pytest.raises(MuplifyError, match=match):
        Options(**kw)


def test_no_dict_style_access():
    o = Options()
    assert not hasattr(o, "get")
    with pytest.raises(TypeError):
        o["eps"]  # noqa: B018


def test_replace_validates_too():
    with pytest.raises(MuplifyError, match="init must be"):
        dataclasses.replace(Options(), init="xavier")


@pytest.mark.parametrize("call", [muplify, analyze])
def test_an_unknown_option_is_named_with_the_valid_ones(call):
    with pytest.raises(MuplifyError, match=r"unknown option 'head_scalling'; muplify's options are head_scaling, "
                                           r"init, .*parametrization"):
        call(MLP(width=64), base_width=32, head_scalling="heads")


def test_options_reach_the_plan_once():
    plan = analyze(MLP(width=64), base_width=32, eps="fixed", weight_decay="scaled", parametrization="sp")
    assert (plan.options.eps, plan.options.weight_decay, plan.options.parametrization) == ("fixed", "scaled", "sp")
    assert plan.options.width_given is False and analyze(MLP(width=64), 32, width=64).options.width_given
    assert plan.capture_seconds is not None and plan.capture_seconds >= 0  # what benchmarks/muplify_scale.py records
