"""The block-doubling unit-lower-triangular inverse equals torch's triangular solve, values and
gradients, at sizes that are and are not powers of two, reading only the strict lower part."""

import pytest
import torch

from hf_llmarch.ops.triangular import unit_lower_inverse


@pytest.mark.parametrize("size", [1, 2, 5, 16, 33])
def test_equals_the_triangular_solve_with_gradients(size):
    gen = torch.Generator().manual_seed(size)
    a = (0.5 * torch.randn(2, 3, size, size, generator=gen, dtype=torch.float64)).requires_grad_()
    eye = torch.eye(size, dtype=torch.float64)
    expected = torch.linalg.solve_triangular(eye + a.tril(-1), eye.expand(2, 3, size, size), upper=False, unitriangular=True)
    got = unit_lower_inverse(a)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10)
    if size == 1:  # the identity: nothing to differentiate
        return
    weights = torch.randn(got.shape, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad((got * weights).sum(), a)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), a)
    torch.testing.assert_close(grad, expected_grad, atol=1e-10, rtol=1e-8)


def test_reads_only_the_strict_lower_part():
    a = torch.randn(4, 4, dtype=torch.float64)
    torch.testing.assert_close(unit_lower_inverse(a), unit_lower_inverse(a.tril(-1)))
