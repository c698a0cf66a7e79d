"""Issue 18 item 4: a base_width that cannot be what the user meant is not applied silently.

Stage-width models built at their base size with base_width = their constructor width: HF Swin (the width hint is
config.hidden_size, the last stage), a timm EfficientNet (the hint is feature_info[0], narrower than the stem), a plain
CNN with stages of w and 2w channels; and a base_width larger than the width.  The plan header names the source."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from muplify import analyze, muplify


def _quiet_analyze(*a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return analyze(*a, **k)


def _swin(embed_dim):
    from transformers import SwinConfig, SwinModel

    return SwinModel(SwinConfig(image_size=32, patch_size=4, embed_dim=embed_dim, depths=[1, 1, 1],
                                num_heads=[2, 2, 2], window_size=2))


def test_swin_built_at_its_base_embed_dim_warns_with_candidates_and_width_fixes_it():
    x = (torch.randn(1, 3, 32, 32),)
    plan = _quiet_analyze(_swin(32), base_width=32, example_inputs=x)
    assert plan.width == 128 and plan.width_source == "config.hidden_size"
    assert "(config.hidden_size)" in str(plan).splitlines()[0]  # the header says where the width came from
    msg = [s for s in plan.warnings if s.startswith("base_width=32 is the size of another scaling dimension")]
    assert msg and "width_mult 4" in msg[0] and "pass width=32" in msg[0] and "128 (w" in msg[0], plan.warnings
    # the width given as the README says (width=config.embed_dim), the proxy and the target agree
    proxy = _quiet_analyze(_swin(32), base_width=32, width=32, example_inputs=x)
    target = _quiet_analyze(_swin(64), base_width=32, width=64, example_inputs=x)
    assert (proxy.width_mult, target.width_mult) == (1, 2)
    assert not [s for s in proxy.warnings + target.warnings if "scaling dimension" in s]
    # the target without width=: measured on hidden_size (×8), and a warning says so and names embed_dim
    plan2 = _quiet_analyze(_swin(64), base_width=32, example_inputs=x)
    assert plan2.width_source == "config.hidden_size" and plan2.width_mult == 8
    msg = [s for s in plan2.warnings if s.startswith("the width is config.hidden_size=256")]
    assert msg and "config.embed_dim=64" in msg[0] and "pass width=64" in msg[0], plan2.warnings


def test_timm_efficientnet_at_its_base_stem_width_warns():
    from muplify_dev.zoo import ensure_torchvision

    ensure_torchvision()
    import timm

    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=10)
    plan = _quiet_analyze(model, base_width=32, example_inputs=(torch.randn(2, 3, 64, 64),))
    assert plan.width == 16 and "feature_info" in plan.width_source
    msg = [s for s in plan.warnings if s.startswith("base_width=32 is the size of another scaling dimension")]
    assert msg and "width_mult 0.5 < 1" in msg[0] and "pass width=32" in msg[0], plan.warnings


class StageCNN(nn.Module):
    """Two stages: a w-channel stem, then 2w channels (stride 2) in most layers, so 2w is the most-used dimension."""

    def __init__(self, w: int, n2: int = 6):
        super().__init__()
        self.stem = nn.Conv2d(3, w, 3, padding=1)
        self.down, self.bn = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.BatchNorm2d(2 * w)
        self.stage2 = nn.Sequential(*[nn.Conv2d(2 * w, 2 * w, 3, padding=1) for _ in range(n2)])
        self.head = nn.Linear(2 * w, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.down(torch.relu(self.stem(x)))))
        return self.head(self.stage2(x).mean((2, 3)))


def test_plain_cnn_with_base_width_equal_to_its_first_stage_warns_with_candidates():
    plan = _quiet_analyze(StageCNN(16), base_width=16, example_inputs=(torch.randn(2, 3, 16, 16),))
    assert plan.width == 32 and plan.width_mult == 2  # ambiguous: applied as computed, but said, with candidates
    msg = [s for s in plan.warnings if s.startswith("base_width=16 is the size of another scaling dimension")]
    assert msg and "pass width=16" in msg[0] and "16 (w/2" in msg[0] and "32 (w" in msg[0], plan.warnings
    plan = _quiet_analyze(StageCNN(16), base_width=16, width=16, example_inputs=(torch.randn(2, 3, 16, 16),))
    assert plan.width_mult == 1 and not [s for s in plan.warnings if "another scaling dimension" in s]


class NamedCNN(StageCNN):
    def __init__(self, width: int):
        super().__init__(width)
        self.width = width  # the model names its width: measured on it at every size (not on the most-used 2w)


def test_cnn_that_names_its_width_is_measured_on_it():
    x = (torch.randn(2, 3, 16, 16),)
    proxy = _quiet_analyze(NamedCNN(16), base_width=16, example_inputs=x)
    target = _quiet_analyze(NamedCNN(64), base_width=16, example_inputs=x)
    assert (proxy.width, proxy.width_mult, target.width, target.width_mult) == (16, 1, 64, 4)
    assert proxy.width_source.startswith("width (the model's width-named attribute")
    assert not [s for s in proxy.warnings if "scaling dimension" in s], proxy.warnings


def test_base_width_above_the_width_warns():
    from muplify.models import MLP

    with pytest.warns(UserWarning, match=r"base_width=256 is larger than the width 64"):
        mu = muplify(MLP(in_features=8, width=64), base_width=256)
    assert mu.plan.width_mult == 0.25  # applied as asked, but said
