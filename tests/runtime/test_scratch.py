"""Scratch: named buffers reused across a loop's blocks."""

from __future__ import annotations

import torch

from geoconcept_cli.runtime.scratch import Scratch


def test_scratch_reuses_a_buffer_and_grows_it_when_asked_for_more():
    scratch = Scratch()
    a = scratch("x", (4, 5), torch.float32, "cpu")
    b = scratch("x", (2, 3), torch.float32, "cpu")  # smaller: the same memory
    assert b.shape == (2, 3) and b.data_ptr() == a.data_ptr()
    c = scratch("x", (5, 5), torch.float32, "cpu")  # larger: a new buffer, kept from now on
    assert c.shape == (5, 5) and c.data_ptr() != a.data_ptr()
    assert scratch("x", (1, 25), torch.float32, "cpu").data_ptr() == c.data_ptr()
    d = scratch("x", (5, 5), torch.float64, "cpu")  # another dtype: another buffer
    assert d.dtype == torch.float64 and d.data_ptr() != c.data_ptr()
    assert scratch("y", (2, 3), torch.float64, "cpu").data_ptr() != d.data_ptr()  # by name
