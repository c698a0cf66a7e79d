"""An equivalent of the `mup` package's example Transformer (microsoft/mup examples/Transformer/model.py): a
sequence-first token model, nn.Embedding after a positional-encoding module in definition order, a causal mask made
in forward, a mup MuReadout (or nn.Linear under standparam) and a log-softmax output.  Written here because the pip
package does not ship its examples; the attention is torch's (the example's is a copy of torch's with 1/d scaling)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class PositionalEncoding(nn.Module):
    def __init__(self, d_model, dropout=0.1, max_len=512):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        pe = torch.zeros(max_len, d_model)
        position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(0).transpose(0, 1))

    def forward(self, x):
        return self.dropout(x + self.pe[:x.size(0), :])


class TransformerModel(nn.Module):
    def __init__(self, ntoken, ninp, nhead, nhid, nlayers, dropout=0.0, standparam=True):
        super().__init__()
        self.src_mask = None
        self.pos_encoder = PositionalEncoding(ninp, dropout)
        layer = nn.TransformerEncoderLayer(ninp, nhead, nhid, dropout)
        self.transformer_encoder = nn.TransformerEncoder(layer, nlayers, enable_nested_tensor=False)
        self.encoder = nn.Embedding(ntoken, ninp)
        if standparam:
            self.decoder = nn.Linear(ninp, ntoken)
        else:
            from mup import MuReadout

            self.decoder = MuReadout(ninp, ntoken)
        self.decoder.bias.data.zero_()
        self.decoder.weight.data.zero_()

    @staticmethod
    def _mask(sz):
        mask = (torch.triu(torch.ones(sz, sz)) == 1).transpose(0, 1)
        return mask.float().masked_fill(mask == 0, float("-inf")).masked_fill(mask == 1, float(0.0))

    def forward(self, src, has_mask=True):
        self.src_mask = self._mask(len(src)).to(src.device) if has_mask else None
        src = self.pos_encoder(self.encoder(src))
        return F.log_softmax(self.decoder(self.transformer_encoder(src, self.src_mask)), dim=-1)
