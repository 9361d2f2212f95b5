"""The series stage: a sequence model over the ordered slices of one series.

Inputs per slice (in z order): the slice CNN's pooled features (embedding) and logits, their
differences to the previous and next slice, and the z spacing to both neighbours. An encoder,
chosen by name (:data:`ENCODERS`), mixes information along the series; the outputs are six logits
per slice (the CNN's logits plus a learned correction, so training starts from the CNN) and six
per series (the maximum of the slice logits plus an attention-pooled correction).

The encoders are what the RSNA 2019 anchors used: ``gru`` (bidirectional GRU, 1st place),
``lstm`` (bidirectional LSTM, 2nd place), ``transformer`` (pre-norm encoder with sinusoidal
positions, as the best single model) and ``conv`` (dilated 1D convolutions).

Shapes: features (B, L, D) float, logits (B, L, 6), z (B, L) mm, mask (B, L) bool (True = a
slice; None = every position). Padding is at the end of a row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ichdet.labels import LABELS
from ichdet.models.registry import register

#: The registry key of this model and of its checkpoints.
KIND = "sequence"
#: z spacing is fed in units of this many mm (typical head CT slices are 5 mm apart).
Z_SCALE = 5.0


@dataclass(frozen=True)
class SequenceConfig:
    arch: str = "gru"
    in_features: int = 1280  # the CNN's embedding size
    hidden: int = 128
    layers: int = 2
    dropout: float = 0.2
    heads: int = 4  # transformer only

    def to_dict(self) -> dict:
        return asdict(self)


Encoder = Callable[[SequenceConfig], nn.Module]
#: Encoders by name: each maps (B, L, hidden) and a mask to (B, L, hidden).
ENCODERS: dict[str, Encoder] = {}


def register_encoder(name: str) -> Callable[[Encoder], Encoder]:
    def add(builder: Encoder) -> Encoder:
        ENCODERS[name] = builder
        return builder

    return add


class Recurrent(nn.Module):
    """Bidirectional GRU/LSTM; padded rows are packed so padding never reaches a slice."""

    def __init__(self, cell: type[nn.GRU] | type[nn.LSTM], cfg: SequenceConfig):
        super().__init__()
        self.rnn = cell(
            cfg.hidden,
            cfg.hidden // 2,
            num_layers=cfg.layers,
            batch_first=True,
            bidirectional=True,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return self.rnn(x)[0]
        lengths = mask.sum(1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out = self.rnn(packed)[0]
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


@register_encoder("gru")
def _gru(cfg: SequenceConfig) -> nn.Module:
    return Recurrent(nn.GRU, cfg)


@register_encoder("lstm")
def _lstm(cfg: SequenceConfig) -> nn.Module:
    return Recurrent(nn.LSTM, cfg)


class Block(nn.Module):
    """Pre-norm self-attention + MLP (scaled_dot_product_attention: exports cleanly)."""

    def __init__(self, cfg: SequenceConfig):
        super().__init__()
        self.heads = cfg.heads
        self.norm1, self.norm2 = nn.LayerNorm(cfg.hidden), nn.LayerNorm(cfg.hidden)
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.hidden, 2 * cfg.hidden), nn.GELU(), nn.Linear(2 * cfg.hidden, cfg.hidden)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, c // self.heads).unbind(2)
        attn_mask = None if mask is None else mask[:, None, None, :]
        a = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask
        )
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, n, c)))
        return x + self.drop(self.mlp(self.norm2(x)))


class Transformer(nn.Module):
    def __init__(self, cfg: SequenceConfig):
        super().__init__()
        self.hidden = cfg.hidden
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.hidden)

    def positions(self, n: int, device: torch.device) -> torch.Tensor:
        """Sinusoidal encoding of the slice position (n, hidden)."""
        position = torch.arange(n, device=device, dtype=torch.float32)[:, None]
        rate = torch.exp(
            torch.arange(0, self.hidden, 2, device=device, dtype=torch.float32)
            * (-math.log(10000.0) / self.hidden)
        )
        return torch.cat([torch.sin(position * rate), torch.cos(position * rate)], dim=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.positions(x.shape[1], x.device)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


@register_encoder("transformer")
def _transformer(cfg: SequenceConfig) -> nn.Module:
    return Transformer(cfg)


class DilatedConv(nn.Module):
    """Residual 1D convolutions with dilations 1, 2, 4, ... (zeroed padding between layers)."""

    def __init__(self, cfg: SequenceConfig):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(cfg.hidden, cfg.hidden, 3, padding=2**i, dilation=2**i)
            for i in range(2 * cfg.layers)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        keep = None if mask is None else mask[:, None, :].to(x.dtype)
        h = x.transpose(1, 2)
        for conv in self.convs:
            h = h * keep if keep is not None else h
            h = h + self.drop(F.gelu(conv(h)))
        return h.transpose(1, 2)


@register_encoder("conv")
def _conv(cfg: SequenceConfig) -> nn.Module:
    return DilatedConv(cfg)


def _shift(x: torch.Tensor, step: int) -> torch.Tensor:
    """x moved by one position along dim 1 (+1: previous slice, -1: next), edges repeated."""
    if step > 0:
        return torch.cat([x[:, :1], x[:, :-1]], dim=1)
    return torch.cat([x[:, 1:], x[:, -1:]], dim=1)


class SeriesModel(nn.Module):
    """See the module docstring; ``forward`` returns (slice logits B x L x 6, study B x 6)."""

    def __init__(self, cfg: SequenceConfig):
        super().__init__()
        if cfg.arch not in ENCODERS:
            raise ValueError(f"unknown sequence arch {cfg.arch!r}; known: {', '.join(ENCODERS)}")
        width = cfg.in_features + len(LABELS)
        self.inputs = nn.Sequential(
            nn.Linear(3 * width + 2, cfg.hidden),
            nn.LayerNorm(cfg.hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
        )
        self.encoder = ENCODERS[cfg.arch](cfg)
        self.slice_head = nn.Linear(cfg.hidden, len(LABELS))
        self.attention = nn.Linear(cfg.hidden, 1)
        self.study_head = nn.Linear(cfg.hidden, len(LABELS))
        for head in (self.slice_head, self.study_head):  # start as the CNN (and its maximum)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def features(
        self, emb: torch.Tensor, logits: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """The per-slice input vector: [f, f - f_prev, f_next - f, dz_prev, dz_next]."""
        f = torch.cat([emb.float(), logits.float()], dim=2)
        z = torch.nan_to_num(z.float())
        has_next = torch.ones_like(z) if mask is None else _shift(mask.to(z.dtype), -1)
        has_next = torch.cat([has_next[:, :-1], torch.zeros_like(z[:, :1])], dim=1)
        has_prev = torch.cat([torch.zeros_like(z[:, :1]), torch.ones_like(z[:, 1:])], dim=1)
        d_prev = (f - _shift(f, 1)) * has_prev[..., None]
        d_next = (_shift(f, -1) - f) * has_next[..., None]
        dz_prev = ((z - _shift(z, 1)).abs() * has_prev).clamp(max=4 * Z_SCALE) / Z_SCALE
        dz_next = ((_shift(z, -1) - z).abs() * has_next).clamp(max=4 * Z_SCALE) / Z_SCALE
        return torch.cat([f, d_prev, d_next, dz_prev[..., None], dz_next[..., None]], dim=2)

    def forward(
        self,
        emb: torch.Tensor,
        logits: torch.Tensor,
        z: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.inputs(self.features(emb, logits, z, mask))
        h = h + self.encoder(h, mask)
        slice_logits = logits.float() + self.slice_head(h)
        score = self.attention(h)
        top = slice_logits
        if mask is not None:
            score = score.masked_fill(~mask[..., None], -1e4)
            top = top.masked_fill(~mask[..., None], -1e4)
        pooled = (torch.softmax(score, dim=1) * h).sum(1)
        study_logits = top.amax(1) + self.study_head(pooled)
        return slice_logits, study_logits


def build_sequence_model(config: SequenceConfig) -> SeriesModel:
    return SeriesModel(config)


@register(KIND)
def from_config(config: dict[str, Any]) -> SeriesModel:
    """The registry's builder: a model from a checkpoint's ``model_config``."""
    return SeriesModel(SequenceConfig(**config))
