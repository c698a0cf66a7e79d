#!/usr/bin/env python
"""muplify on models that no test contains, called as a new user calls it: the check behind "works on your model".

The test zoo (muplify_dev/zoo.py, 58 models) is what the suite runs; this is the wider net a session casts before calling
the analysis done: 33 more transformers and timm families from tiny configs (HF Swin given ``width=embed_dim``, as
the README says for stage-width models) and 25 hand-written models of common public patterns (muplify_dev/
hand_written.py and below: U-Net, DiT, RWKV-4, a GNN, a conv VAE, GQA with growing and fixed K/V heads, a fused
multi-query qkv, a scalar value head, a 1-D U-Net, a positional-table LM, torch's Xavier-initialised
MultiheadAttention, a stage-width CNN, the `mup` package's example Transformer, Perceiver latents, set-transformer
seeds, FiLM, a soft MoE, LoRA, DLRM, Meta's reference Llama, an FFT long convolution, FNet, sub-pixel
super-resolution, ``F.unfold`` patches).  Results: results/beyond_zoo/ (all), results/beyond_zoo_hand_written/.
Per model, built at twice its base width:

* ``muplify(model, base_width=...)`` (bare for transformers/timm, with example inputs otherwise): roles against the
  two-width shape-diff oracle (muplify_dev/oracle.py; "n/a" where the oracle does not know a raw parameter's layout),
  the width and where it came from, the parameters resting on a marked guess;
* base-width identity: at ``base_width`` = the model's width the forward is bit-identical to the original;
* export: ``mu.to_standard()`` with ``hp={"output_mult": 2, "attn_mult": 0.5}`` against the muplified model
  (a refusal is reported with its reason);
* depth: ``base_depth=1``: blocks and residual branches found, or the reason there are none.

    python benchmarks/beyond_zoo.py                 # all 58 models (~3 minutes on 2 cores)
    python benchmarks/beyond_zoo.py --quick         # 3 models (CI smoke run)
    python benchmarks/beyond_zoo.py --only phimoe xlnet

Writes ``OUT/beyond_zoo.json`` and ``OUT/table.md`` (the markdown table it prints).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import common  # noqa: E402,F401  (puts the repository root, hence muplify and muplify_dev, on sys.path)
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers as T  # noqa: E402

from muplify import muplify  # noqa: E402
from muplify_dev.hand_written import (DLRM, FNet, VAE, FFTLongConv, FiLM, LearnedQueries, LoRAMLP,  # noqa: E402
                                      MetaLlama, SubPixelSR, UnfoldPatches)
from muplify_dev.kv_heads import GQALM, MQAFusedLM  # noqa: E402
from muplify_dev.soft_moe import SoftMoE  # noqa: E402
from muplify_dev.oracle import oracle_roles  # noqa: E402
from muplify_dev.zoo import HEAD_DIM, MAX_POS, VOCAB, _images, _tokens, ensure_torchvision  # noqa: E402

ensure_torchvision()
import timm  # noqa: E402
from timm.models.convmixer import ConvMixer  # noqa: E402
from timm.models.densenet import DenseNet  # noqa: E402
from timm.models.metaformer import MetaFormer  # noqa: E402


H = lambda w: max(1, w // HEAD_DIM)
LM = lambda: {"input_ids": _tokens(), "use_cache": False}
ENC = lambda: {"input_ids": _tokens()}


def hf(mcls, ccls, inputs, **cfg):
    c = getattr(T, ccls)(**cfg)
    return getattr(T, mcls)(c), (), inputs


def dec(w, **extra):
    d = dict(vocab_size=VOCAB, hidden_size=w, num_hidden_layers=2, num_attention_heads=H(w),
             num_key_value_heads=H(w), max_position_embeddings=MAX_POS, tie_word_embeddings=False,
             bos_token_id=1, eos_token_id=2, pad_token_id=0)
    d.update(extra)
    return d


HF_AND_TIMM = {
    "gptj": lambda w: hf("GPTJForCausalLM", "GPTJConfig", LM(), vocab_size=VOCAB, n_embd=w, n_layer=2, n_head=H(w),
                         rotary_dim=8, n_positions=MAX_POS, resid_pdrop=0., embd_pdrop=0., attn_pdrop=0.,
                         bos_token_id=1, eos_token_id=2),
    "bloom": lambda w: hf("BloomForCausalLM", "BloomConfig", LM(), vocab_size=VOCAB, hidden_size=w, n_layer=2,
                          n_head=H(w), bos_token_id=1, eos_token_id=2),
    "codegen": lambda w: hf("CodeGenForCausalLM", "CodeGenConfig", LM(), vocab_size=VOCAB, n_embd=w, n_layer=2,
                            n_head=H(w), rotary_dim=8, n_positions=MAX_POS, n_ctx=MAX_POS, resid_pdrop=0.,
                            embd_pdrop=0., attn_pdrop=0., bos_token_id=1, eos_token_id=2),
    "gpt_bigcode": lambda w: hf("GPTBigCodeForCausalLM", "GPTBigCodeConfig", LM(), vocab_size=VOCAB, n_embd=w,
                                n_layer=2, n_head=H(w), n_positions=MAX_POS, multi_query=True, resid_pdrop=0.,
                                embd_pdrop=0., attn_pdrop=0., bos_token_id=1, eos_token_id=2),
    "stablelm": lambda w: hf("StableLmForCausalLM", "StableLmConfig", LM(), intermediate_size=3 * w,
                             **dec(w)),
    "cohere": lambda w: hf("CohereForCausalLM", "CohereConfig", LM(), intermediate_size=3 * w,
                           **dec(w, tie_word_embeddings=True)),
    "granite": lambda w: hf("GraniteForCausalLM", "GraniteConfig", LM(), intermediate_size=3 * w, **dec(w)),
    "starcoder2": lambda w: hf("Starcoder2ForCausalLM", "Starcoder2Config", LM(), intermediate_size=3 * w,
                               **dec(w)),
    "olmo2": lambda w: hf("Olmo2ForCausalLM", "Olmo2Config", LM(), intermediate_size=3 * w, **dec(w)),
    "gemma3_text": lambda w: hf("Gemma3ForCausalLM", "Gemma3TextConfig", LM(), intermediate_size=3 * w,
                                head_dim=HEAD_DIM, sliding_window=4, **dec(w, tie_word_embeddings=True)),
    "nemotron": lambda w: hf("NemotronForCausalLM", "NemotronConfig", LM(), intermediate_size=3 * w,
                             head_dim=HEAD_DIM, **dec(w)),
    "granitemoe": lambda w: hf("GraniteMoeForCausalLM", "GraniteMoeConfig", LM(), intermediate_size=w,
                               num_local_experts=4, num_experts_per_tok=2, **dec(w)),
    "phimoe": lambda w: hf("PhimoeForCausalLM", "PhimoeConfig", LM(), intermediate_size=w, num_local_experts=4,
                           num_experts_per_tok=2, **dec(w)),
    "xlm_roberta": lambda w: hf("XLMRobertaForMaskedLM", "XLMRobertaConfig", ENC(), vocab_size=VOCAB,
                                hidden_size=w, num_hidden_layers=2, num_attention_heads=H(w),
                                intermediate_size=4 * w, max_position_embeddings=MAX_POS + 2,
                                hidden_dropout_prob=0., attention_probs_dropout_prob=0.),
    "mobilebert": lambda w: hf("MobileBertForMaskedLM", "MobileBertConfig", ENC(), vocab_size=VOCAB, hidden_size=w,
                               num_hidden_layers=2, num_attention_heads=H(w) if H(w) > 0 else 1,
                               intermediate_size=w, embedding_size=24, intra_bottleneck_size=w // 2,
                               true_hidden_size=w // 2, max_position_embeddings=MAX_POS, hidden_dropout_prob=0.,
                               attention_probs_dropout_prob=0.),
    "funnel": lambda w: hf("FunnelForMaskedLM", "FunnelConfig", ENC(), vocab_size=VOCAB, d_model=w,
                           n_head=H(w), d_head=HEAD_DIM, d_inner=4 * w, block_sizes=[1, 1], hidden_dropout=0.,
                           attention_dropout=0., activation_dropout=0.),
    "xlnet": lambda w: hf("XLNetLMHeadModel", "XLNetConfig", ENC(), vocab_size=VOCAB, d_model=w, n_layer=2,
                          n_head=H(w), d_inner=4 * w, dropout=0.),
    "mt5": lambda w: hf("MT5ForConditionalGeneration", "MT5Config",
                        {"input_ids": _tokens(), "decoder_input_ids": _tokens(), "use_cache": False},
                        vocab_size=VOCAB, d_model=w, d_kv=HEAD_DIM, d_ff=2 * w, num_layers=1, num_heads=H(w),
                        dropout_rate=0., decoder_start_token_id=0),
    "pegasus": lambda w: hf("PegasusForConditionalGeneration", "PegasusConfig",
                            {"input_ids": _tokens(), "decoder_input_ids": _tokens(), "use_cache": False},
                            vocab_size=VOCAB, d_model=w, encoder_layers=1, decoder_layers=1,
                            encoder_attention_heads=H(w), decoder_attention_heads=H(w), encoder_ffn_dim=2 * w,
                            decoder_ffn_dim=2 * w, max_position_embeddings=MAX_POS, dropout=0.,
                            pad_token_id=0, decoder_start_token_id=0),
    # a stage-width model (embed_dim w, stages w / 2w / 4w): given width=embed_dim as the README says (_call)
    "hf_swin": lambda w: hf("SwinForImageClassification", "SwinConfig", {"pixel_values": _images()}, image_size=32,
                            patch_size=4, embed_dim=w, depths=[1, 1, 1], num_heads=[H(w), H(2 * w), H(4 * w)],
                            window_size=2, num_labels=10, hidden_dropout_prob=0., attention_probs_dropout_prob=0.),
    "hf_vit": lambda w: hf("ViTForImageClassification", "ViTConfig", {"pixel_values": _images()}, image_size=32,
                           patch_size=8, hidden_size=w, num_hidden_layers=2, num_attention_heads=H(w),
                           intermediate_size=4 * w, num_labels=10, hidden_dropout_prob=0.,
                           attention_probs_dropout_prob=0.),
    "hf_dinov2": lambda w: hf("Dinov2Model", "Dinov2Config", {"pixel_values": _images()}, image_size=32,
                              patch_size=8, hidden_size=w, num_hidden_layers=2, num_attention_heads=H(w),
                              mlp_ratio=4),
    "hf_convnextv2": lambda w: hf("ConvNextV2ForImageClassification", "ConvNextV2Config",
                                  {"pixel_values": _images()}, hidden_sizes=[w, 2 * w], depths=[1, 1],
                                  num_stages=2, num_labels=10),
    "hf_resnet": lambda w: hf("ResNetForImageClassification", "ResNetConfig", {"pixel_values": _images()},
                              embedding_size=w, hidden_sizes=[w, 2 * w], depths=[1, 1], layer_type="basic",
                              num_labels=10),
    "hf_segformer": lambda w: hf("SegformerForSemanticSegmentation", "SegformerConfig", {"pixel_values": _images()},
                                 num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[w, 2 * w],
                                 patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
                                 decoder_hidden_size=w, num_labels=5),
    "hf_hubert": lambda w: hf("HubertForCTC", "HubertConfig", {"input_values": torch.randn(2, 800)},
                              vocab_size=32, hidden_size=w, num_hidden_layers=2, num_attention_heads=H(w),
                              intermediate_size=2 * w, conv_dim=(32, 32), conv_stride=(5, 4), conv_kernel=(10, 8),
                              num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, hidden_dropout=0.,
                              attention_dropout=0., activation_dropout=0., feat_proj_dropout=0., layerdrop=0.,
                              mask_time_prob=0.),
    "timm_eva": lambda w: (timm.create_model("eva02_tiny_patch14_224", pretrained=False, img_size=32,
                                             patch_size=8, embed_dim=w, depth=2, num_heads=H(w),
                                             num_classes=10), (_images(),), {}),
    "timm_cait": lambda w: (timm.create_model("cait_xxs24_224", pretrained=False, img_size=32, patch_size=8,
                                              embed_dim=w, depth=2, num_heads=H(w), num_classes=10),
                            (_images(),), {}),
    "timm_poolformer": lambda w: (MetaFormer(
        dims=(w, 2 * w), depths=(1, 1), num_classes=10, res_scale_init_values=(None, None)), (_images(),), {}),
    "timm_convmixer": lambda w: (ConvMixer(
        dim=w, depth=2, kernel_size=3, patch_size=4, num_classes=10), (_images(),), {}),
    "timm_levit": lambda w: (timm.create_model("levit_128s", pretrained=False, img_size=32, embed_dim=(w, 2 * w),
                                               key_dim=16, num_heads=(H(w), H(2 * w)), depth=(1, 1),
                                               num_classes=10), (_images(),), {}),
    "timm_densenet": lambda w: (DenseNet(
        growth_rate=w // 2, block_config=(1, 1), num_classes=10), (_images(),), {}),
    "timm_vit_reg": lambda w: (timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32,
                                                 patch_size=8, embed_dim=w, depth=2, num_heads=H(w), reg_tokens=2,
                                                 no_embed_class=True, class_token=True, num_classes=10,
                                                 global_pool="avg"), (_images(),), {}),
}




# ------------------------------------------------------------------------- hand-written public patterns
class UNet(nn.Module):
    """Two-level UNet: skip concatenation of w + w channels, transposed-conv upsampling, 1x1 output head."""
    def __init__(self, w):
        super().__init__()
        self.inc = nn.Conv2d(3, w, 3, padding=1)
        self.down = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(2 * w, 2 * w, 3, padding=1)
        self.up = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec = nn.Conv2d(2 * w, w, 3, padding=1)
        self.gn = nn.GroupNorm(8, w)
        self.out = nn.Conv2d(w, 3, 1)

    def forward(self, x):
        a = F.silu(self.inc(x))
        b = F.silu(self.mid(F.silu(self.down(a))))
        u = self.up(b)
        h = F.silu(self.gn(self.dec(torch.cat([u, a], dim=1))))
        return self.out(h)


class DiTBlock(nn.Module):
    def __init__(self, w, heads):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(w, elementwise_affine=False)
        self.qkv = nn.Linear(w, 3 * w)
        self.proj = nn.Linear(w, w)
        self.norm2 = nn.LayerNorm(w, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(w, 4 * w), nn.GELU(), nn.Linear(4 * w, w))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(w, 6 * w))

    def forward(self, x, c):
        s1, g1, b1, s2, g2, b2 = self.ada(c).unsqueeze(1).chunk(6, dim=-1)
        h = self.norm1(x) * (1 + s1) + b1
        B, T, C = h.shape
        q, k, v = self.qkv(h).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, C)
        x = x + g1 * self.proj(a)
        h = self.norm2(x) * (1 + s2) + b2
        return x + g2 * self.mlp(h)


class DiT(nn.Module):
    """Patch embedding, timestep MLP with sinusoidal features, adaLN-modulated blocks, linear un-patchify head."""
    def __init__(self, w):
        super().__init__()
        self.patch = nn.Conv2d(4, w, 2, stride=2)
        self.pos = nn.Parameter(torch.zeros(1, 16, w))
        self.t_mlp = nn.Sequential(nn.Linear(32, w), nn.SiLU(), nn.Linear(w, w))
        self.y_emb = nn.Embedding(10, w)
        self.blocks = nn.ModuleList([DiTBlock(w, w // 16) for _ in range(2)])
        self.final_norm = nn.LayerNorm(w, elementwise_affine=False)
        self.final_ada = nn.Linear(w, 2 * w)
        self.head = nn.Linear(w, 2 * 2 * 4)

    def forward(self, x, t, y):
        h = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        half = 16
        freqs = torch.exp(-torch.arange(half, dtype=torch.float32) / half)
        tf = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=-1)
        c = self.t_mlp(tf) + self.y_emb(y)
        for blk in self.blocks:
            h = blk(h, c)
        s, b = self.final_ada(F.silu(c)).unsqueeze(1).chunk(2, dim=-1)
        return self.head(self.final_norm(h) * (1 + s) + b)


class RWKVTimeMix(nn.Module):
    """RWKV-4-style time mixing: per-channel decay and token-shift mixing parameters, a recurrent loop."""
    def __init__(self, w):
        super().__init__()
        self.time_decay = nn.Parameter(torch.zeros(w))
        self.time_first = nn.Parameter(torch.zeros(w))
        self.mix_k = nn.Parameter(torch.full((1, 1, w), 0.5))
        self.mix_v = nn.Parameter(torch.full((1, 1, w), 0.5))
        self.key = nn.Linear(w, w, bias=False)
        self.value = nn.Linear(w, w, bias=False)
        self.receptance = nn.Linear(w, w, bias=False)
        self.output = nn.Linear(w, w, bias=False)

    def forward(self, x):
        xx = F.pad(x, (0, 0, 1, -1))
        k = self.key(x * self.mix_k + xx * (1 - self.mix_k))
        v = self.value(x * self.mix_v + xx * (1 - self.mix_v))
        r = torch.sigmoid(self.receptance(x))
        w = -torch.exp(self.time_decay)
        num = torch.zeros_like(k[:, 0]); den = torch.zeros_like(k[:, 0])
        outs = []
        for t in range(x.shape[1]):
            e = torch.exp(self.time_first + k[:, t])
            outs.append((num + e * v[:, t]) / (den + e))
            num = torch.exp(w) * num + torch.exp(k[:, t]) * v[:, t]
            den = torch.exp(w) * den + torch.exp(k[:, t])
        return self.output(r * torch.stack(outs, 1))


class RWKVLM(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.emb = nn.Embedding(128, w)
        self.ln0 = nn.LayerNorm(w)
        self.blocks = nn.ModuleList([RWKVTimeMix(w) for _ in range(2)])
        self.lns = nn.ModuleList([nn.LayerNorm(w) for _ in range(2)])
        self.ln_out = nn.LayerNorm(w)
        self.head = nn.Linear(w, 128, bias=False)

    def forward(self, idx):
        x = self.ln0(self.emb(idx))
        for ln, b in zip(self.lns, self.blocks):
            x = x + b(ln(x))
        return self.head(self.ln_out(x))


class GNN(nn.Module):
    """Message passing with index_add over an edge list, node features in, node classes out."""
    def __init__(self, w):
        super().__init__()
        self.inp = nn.Linear(12, w)
        self.msg = nn.ModuleList([nn.Linear(2 * w, w) for _ in range(2)])
        self.upd = nn.ModuleList([nn.Linear(2 * w, w) for _ in range(2)])
        self.out = nn.Linear(w, 5)

    def forward(self, x, edges):
        h = F.relu(self.inp(x))
        src, dst = edges
        for m, u in zip(self.msg, self.upd):
            msg = F.relu(m(torch.cat([h[src], h[dst]], -1)))
            agg = torch.zeros_like(h).index_add_(0, dst, msg)
            h = F.relu(u(torch.cat([h, agg], -1)))
        return self.out(h)


class MHALM(nn.Module):
    """Issue 18 item 2: a token LM on torch's nn.TransformerEncoderLayer (its MultiheadAttention in_proj is
    Xavier-uniform, the init rule once read from noise), a learnable logit temperature owned by the root first
    (item 6: token inputs read from the graph)."""
    def __init__(self, w):
        super().__init__()
        self.log_temp = nn.Parameter(torch.zeros(()))
        self.emb = nn.Embedding(128, w)
        self.block = nn.TransformerEncoderLayer(w, max(1, w // 16), 2 * w, dropout=0.0, batch_first=True)
        self.head = nn.Linear(w, 128)

    def forward(self, ids):
        return self.head(self.block(self.emb(ids))) * self.log_temp.exp()


class StageCNN(nn.Module):
    """Issue 18 item 4: stages of w and 2w channels, 2w the most-used; names its width (self.width)."""
    def __init__(self, w):
        super().__init__()
        self.width = w
        self.stem, self.down = nn.Conv2d(3, w, 3, padding=1), nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(2 * w)
        self.stage2 = nn.Sequential(*[nn.Conv2d(2 * w, 2 * w, 3, padding=1) for _ in range(4)])
        self.head = nn.Linear(2 * w, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.down(F.relu(self.stem(x)))))
        return self.head(self.stage2(x).mean((2, 3)))


class ValueHeadMLP(nn.Module):
    """Issue 18 item 3: a scalar value / regression head nn.Linear(w, 1) (a readout, not a router)."""
    def __init__(self, w):
        super().__init__()
        self.inp, self.hid, self.v = nn.Linear(8, w), nn.Linear(w, w), nn.Linear(w, 1)

    def forward(self, x):
        return self.v(F.relu(self.hid(F.relu(self.inp(x))))).squeeze(-1)


class UNet1d(nn.Module):
    """Issue 18 item 3: a 1-D U-Net with skip concatenation and a one-channel Conv1d(w, 1, 1) output."""
    def __init__(self, w):
        super().__init__()
        self.inc = nn.Conv1d(2, w, 3, padding=1)
        self.down = nn.Conv1d(w, 2 * w, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose1d(2 * w, w, 2, stride=2)
        self.dec = nn.Conv1d(2 * w, w, 3, padding=1)
        self.out = nn.Conv1d(w, 1, 1)

    def forward(self, x):
        a = F.silu(self.inc(x))
        u = self.up(F.silu(self.down(a)))
        return self.out(F.silu(self.dec(torch.cat([u, a], dim=1))))


class PosTableLM(nn.Module):
    """Issue 18 item 5: a learned positional table (1, N, w) added to the token embeddings (input-like)."""
    def __init__(self, w):
        super().__init__()
        self.emb = nn.Embedding(128, w)
        self.pos = nn.Parameter(torch.randn(1, 6, w) * 0.02)
        self.block = nn.TransformerEncoderLayer(w, max(1, w // 16), 2 * w, dropout=0.0, batch_first=True)
        self.head = nn.Linear(w, 128)

    def forward(self, ids):
        return self.head(self.block(self.emb(ids) + self.pos))


def _mup_example(w):
    from muplify_dev.mup_example_transformer import TransformerModel  # the mup package's example Transformer

    return TransformerModel(100, w, 2, 2 * w, 2)


G = torch.Generator().manual_seed(0)
HAND_WRITTEN = {
    "gqa_lm": (GQALM, lambda: ((torch.randint(0, 128, (2, 6), generator=G),), {}), 64),
    "gqa_fixed_kv": (lambda w: GQALM(w, kv_heads=2), lambda: ((torch.randint(0, 128, (2, 6), generator=G),), {}), 64),
    "mqa_fused": (MQAFusedLM, lambda: ((torch.randint(0, 128, (2, 6), generator=G),), {}), 64),
    "value_head": (ValueHeadMLP, lambda: ((torch.randn(3, 8, generator=G),), {}), 32),
    "unet1d": (UNet1d, lambda: ((torch.randn(2, 2, 16, generator=G),), {}), 32),
    "pos_table_lm": (PosTableLM, lambda: ((torch.randint(0, 128, (2, 6), generator=G),), {}), 32),
    "mha_lm": (MHALM, lambda: ((torch.randint(0, 128, (2, 6), generator=G),), {}), 32),
    "stage_cnn": (StageCNN, lambda: ((torch.randn(2, 3, 16, 16, generator=G),), {}), 16),
    "mup_example_transformer": (_mup_example, lambda: ((torch.randint(0, 100, (6, 2), generator=G),), {}), 32),
    "unet": (UNet, lambda: ((torch.randn(2, 3, 16, 16, generator=G),), {}), 32),
    "dit": (DiT, lambda: ((torch.randn(2, 4, 8, 8, generator=G), torch.rand(2, generator=G),
                           torch.randint(0, 10, (2,), generator=G)), {}), 64),
    "rwkv": (RWKVLM, lambda: ((torch.randint(0, 128, (2, 6), generator=G),), {}), 64),
    "gnn": (GNN, lambda: ((torch.randn(7, 12, generator=G), torch.randint(0, 7, (2, 15), generator=G)), {}), 64),
    "vae": (VAE, lambda: ((torch.randn(2, 3, 16, 16, generator=G),), {}), 32),
    "perceiver_latents": (LearnedQueries, lambda: ((torch.randn(3, 7, 12, generator=G),), {}), 64),
    "set_transformer_seeds": (lambda w: LearnedQueries(w, residual=False),
                              lambda: ((torch.randn(3, 7, 12, generator=G),), {}), 64),
    "film": (FiLM, lambda: ((torch.randn(4, 8, generator=G), torch.randint(0, 10, (4,), generator=G)), {}), 32),
    "soft_moe": (SoftMoE, lambda: ((torch.randn(3, 8, generator=G),), {}), 32),
    "lora_mlp": (LoRAMLP, lambda: ((torch.randn(4, 10, generator=G),), {}), 32),
    "dlrm": (DLRM, lambda: ((torch.randn(4, 13, generator=G), torch.randint(0, 100, (4, 3, 2), generator=G)), {}), 32),
    "meta_llama": (MetaLlama, lambda: ((torch.randint(0, 64, (2, 8), generator=G),), {}), 32),
    "fft_long_conv": (FFTLongConv, lambda: ((torch.randn(2, 16, 4, generator=G),), {}), 32),
    "fnet": (FNet, lambda: ((torch.randint(0, 40, (2, 8), generator=G),), {}), 32),
    "sub_pixel_sr": (SubPixelSR, lambda: ((torch.randn(2, 3, 8, 8, generator=G),), {}), 32),
    "unfold_patches": (UnfoldPatches, lambda: ((torch.randn(2, 3, 16, 16, generator=G),), {}), 32),
}



def _first(o):
    if isinstance(o, torch.Tensor):
        return o
    if getattr(o, "logits", None) is not None:
        return o.logits
    if getattr(o, "last_hidden_state", None) is not None:
        return o.last_hidden_state
    return o[0]


def _builder(name):
    """(build(width) -> (model, args, kwargs), base width, bare call?)"""
    if name in HF_AND_TIMM:
        return HF_AND_TIMM[name], 64, True
    cls, inputs, base = HAND_WRITTEN[name]
    return (lambda w: (cls(w), *inputs())), base, False


def _quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


def _stage_width(model) -> dict:
    """Stage-width models are given ``width=`` their constructor's width (README, "Stage-width models")."""
    config = getattr(model, "config", None)
    return {"width": config.embed_dim} if type(config).__name__ == "SwinConfig" else {}


def _call(model, args, kwargs, base, bare, **kw):
    kw = {**_stage_width(model), **kw}
    if bare:
        return muplify(model, base_width=base, **kw)
    return muplify(model, base_width=base, example_inputs=args, example_kwargs=kwargs or None, **kw)


def _transfer_role_diffs(build, base, bare, args, kwargs) -> dict:
    """Roles of the proxy (base width) and the target (twice it) as tune/transfer build them."""
    from muplify.tools.tune.trial import transfer

    make = lambda w: build(w)[0]  # noqa: E731
    mkw = {} if bare else {"example_inputs": args, "example_kwargs": kwargs or None}
    cfg = {"lr": 1e-3, "hp": {}, "width": base, "muplify": {}}
    proxy, _ = _quiet(transfer, make, cfg, **mkw)
    target, _ = _quiet(transfer, make, cfg, width=2 * base, **mkw)
    return {n: [proxy.plan[n].role, target.plan[n].role] for n in target.plan.params
            if n in proxy.plan.params and proxy.plan[n].role != target.plan[n].role}


def run_one(name: str) -> dict:
    build, base, bare = _builder(name)
    row: dict = {"model": name}
    try:
        torch.manual_seed(0)
        model, args, kwargs = build(2 * base)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            mu = _call(model, args, kwargs, base, bare)
            row["muplify_s"] = round(time.perf_counter() - t0, 3)
        plan = mu.plan
        row.update(width=plan.width, width_source=plan.width_source, roles=plan.summary(),
                   guesses=[n for n in plan if plan[n].decided_by.startswith("guess")],
                   scaling_dims=[[s, str(e)] for s, e, _n in plan.scaling_dims],
                   warned=any("muplify guessed" in str(w.message) for w in caught))
        try:
            expected = _quiet(oracle_roles, lambda w: build(w), base, 2 * base)
            row["oracle_disagreements"] = {n: [plan[n].role, r] for n, r in expected.items() if plan[n].role != r}
        except ValueError as e:  # a raw parameter whose layout the oracle does not know
            row["oracle_disagreements"] = None
            row["oracle_note"] = str(e).split(";")[0]
        torch.manual_seed(0)
        m0, args0, kwargs0 = build(base)
        ref = copy.deepcopy(m0)
        mu0 = _quiet(_call, m0, args0, kwargs0, base, bare)
        with torch.no_grad():
            torch.manual_seed(1)
            a = _first(mu0(*args0, **kwargs0))
            torch.manual_seed(1)
            b = _first(ref(*args0, **kwargs0))
        row["base_identity"] = bool(torch.equal(a, b))
        # issue 18 item 1: roles at the base-width instance (the proxy) against the target's; plain muplify() reads
        # one instance each, transfer() reads both from two widths
        row["proxy_role_diffs"] = {n: [mu0.plan[n].role, plan[n].role] for n in plan.params
                                   if n in mu0.plan.params and mu0.plan[n].role != plan[n].role}
        row["transfer_role_diffs"] = _transfer_role_diffs(build, base, bare, args0, kwargs0)
    except Exception as e:  # noqa: BLE001 - a row per model, whatever happens
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        row["traceback"] = traceback.format_exc()[-2000:]
        return row
    try:
        torch.manual_seed(0)
        model, args, kwargs = build(2 * base)
        mu = _quiet(_call, model, args, kwargs, base, bare, hp={"output_mult": 2.0, "attn_mult": 0.5})
        mu.eval()
        with torch.no_grad():
            torch.manual_seed(1)
            y = _first(mu(*args, **kwargs))
            std = mu.to_standard()
            torch.manual_seed(1)
            z = _first(std(*args, **kwargs))
        row["export_rel_err"] = float((z - y).abs().max() / (y.abs().max() + 1e-12))
    except Exception as e:  # noqa: BLE001
        row["export_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    try:
        torch.manual_seed(0)
        model, args, kwargs = build(2 * base)
        mu = _quiet(_call, model, args, kwargs, base, bare, base_depth=1)
        row.update(depth=mu.plan.options.depth, branches=sum(s.kind == "branch" for s in mu.plan.sites))
    except Exception as e:  # noqa: BLE001
        row["depth_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return row


QUICK = ["phimoe", "xlnet", "dit"]


def _agree(diffs) -> str:
    return "n/a" if diffs is None else ("yes" if not diffs else "NO " + json.dumps(diffs))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--only", nargs="*", help="model names")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "beyond_zoo"))
    args = ap.parse_args(argv)
    names = args.only or (QUICK if args.quick else list(HF_AND_TIMM) + list(HAND_WRITTEN))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = [run_one(n) for n in names]
    table: list[str] = []

    def say(line: str = "") -> None:
        print(line)
        table.extend(line.split("\n"))

    say("| model | muplify() s | width (from) | in/hid/out/vec/fixed | = oracle | guesses | base identity "
          "| export (hp) | depth / branches | proxy roles = target (plain / transfer) |")
    say("|" + "---|" * 10)
    for r in rows:
        if "error" in r:
            say(f"| {r['model']} | ERROR {r['error']} |" + " |" * 8)
            continue
        ro = r["roles"]
        dis = r["oracle_disagreements"]
        agree = "n/a" if dis is None else ("yes" if not dis else "NO " + json.dumps(dis))
        export = f"{r['export_rel_err']:.0e}" if "export_rel_err" in r else "refused: " + r["export_error"][:70]
        depth = f"{r['depth']} / {r['branches']}" if "depth" in r else "refused: " + r["depth_error"][:60]
        say(f"| {r['model']} | {r['muplify_s']:.2f} | {r['width']} ({r['width_source']}) | "
              f"{ro['input']}/{ro['hidden']}/{ro['output']}/{ro['vector']}/{ro['fixed']} | {agree} | "
              f"{len(r['guesses'])} | {'yes' if r['base_identity'] else 'NO'} | {export} | {depth} | "
              f"{_agree(r.get('proxy_role_diffs'))} / {_agree(r.get('transfer_role_diffs'))} |")
    ok = [r for r in rows if "error" not in r]
    known = [r for r in ok if r["oracle_disagreements"] is not None]
    say(f"\n{len(ok)}/{len(rows)} models muplified; {sum(not r['oracle_disagreements'] for r in known)}/"
          f"{len(known)} agree with the oracle where it knows the layouts; base identity "
          f"{sum(r['base_identity'] for r in ok)}/{len(ok)}; export {sum('export_rel_err' in r for r in ok)}/{len(ok)}; "
          f"{sum(len(r['guesses']) for r in ok)} parameters on a marked guess")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "beyond_zoo.json"), "w") as fh:
        json.dump({"torch": torch.__version__, "transformers": T.__version__, "rows": rows}, fh, indent=1)
    with open(os.path.join(args.out, "table.md"), "w") as fh:
        fh.write("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
