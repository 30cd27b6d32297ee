"""Tensors reused from one block of a loop to the next.

A (rows x gallery) temporary of a few MB, allocated afresh for every block, can cost more than
the arithmetic on it: on Linux, glibc hands such blocks back to the system when they are freed,
and each new one is mapped and page-faulted again. Loops that take their temporaries from one
``Scratch`` touch the same memory every block.
"""

from __future__ import annotations

import math

import torch


class Scratch:
    """Named buffers, grown on demand: ``scratch("mask", (b, n), torch.bool, device)`` is a
    (b, n) view of the buffer "mask", whose contents are left over from its last use."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def __call__(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device | str) -> torch.Tensor:  # fmt: skip
        size = math.prod(shape)
        buf = self._buffers.get(name)
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # as tensors say: "cuda:0"
            device = torch.device("cuda", torch.cuda.current_device())
        if buf is None or buf.numel() < size or buf.dtype != dtype or buf.device != device:
            buf = self._buffers[name] = torch.empty(size, dtype=dtype, device=device)
        return buf[:size].view(shape)
