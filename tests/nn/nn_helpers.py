"""Shared by the wordlm.nn tests: trained-like weights, torch.ao's quantize_dynamic, error measures."""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn


def trained_like(m: nn.Module, seed: int = 0) -> nn.Module:
    """Weights whose rows differ in scale (as trained ones do: init's rows all share one range), biases
    moved off zero; in place, returned."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(torch.exp(0.5 * torch.randn(p.shape[0], 1, generator=g, dtype=p.dtype)))
            else:
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


def torch_ao(m: nn.Module, spec: set) -> nn.Module:
    """torch.ao's quantize_dynamic (qint8) of m (a root it would not swap is wrapped)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice
        return torch.ao.quantization.quantize_dynamic(nn.Sequential(m), spec, dtype=torch.qint8)[0]


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()) ** 2).mean().sqrt())


def first(out):
    """A module's main output: the tensor itself, or the first of a tuple."""
    return out[0] if isinstance(out, tuple) else out
