"""The bicubic resize written as two matrix products equals `F.interpolate`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mor_edge.resize import bicubic, bicubic_as_matmul


@pytest.mark.parametrize("size", [(68, 92), (224, 224), (9, 11)])
def test_matmul_form_equals_interpolate(size: tuple[int, int]) -> None:
    x = torch.rand(2, 3, 17, 23, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    assert torch.equal(bicubic(x, size), expected)  # outside the context: the resize op itself
    with bicubic_as_matmul():
        got = bicubic(x, size)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
