"""S4D parameters: the init families of the S4D paper and ZOH discretisation.

Parameters per layer: log_dt [H], log_A_real [H, M], A_imag [H, M], C [H, M, 2] (view_as_real
of a complex tensor, so optimisers and AMP only see real numbers) and D [H]; B is fixed to 1.
"""

from __future__ import annotations

import math

import torch

INITS = ("lin", "inv", "real", "legs")


def _legs_imag(M: int) -> torch.Tensor:
    """Imaginary parts of the normal part of HiPPO-LegS (N = 2M), positive half, largest first.
    LegS + P P^T (P_n = sqrt(n + 1/2)) is -1/2 I plus a skew-symmetric S; i S is Hermitian."""
    N = 2 * M
    q = torch.sqrt(2 * torch.arange(N, dtype=torch.float64) + 1)
    ones = torch.ones(N, N, dtype=torch.float64)
    S = 0.5 * q[:, None] * q[None, :] * (ones.triu(1) - ones.tril(-1))
    freqs = torch.linalg.eigvalsh(1j * S.to(torch.complex128))  # real, ascending, in +- pairs
    return freqs[M:].flip(0)


def _eigenvalues(init: str, M: int):
    """(real part, imaginary part) of lambda_n, n = 0..M-1, float64 [M] each."""
    n = torch.arange(M, dtype=torch.float64)
    N = 2 * M
    half = torch.full((M,), -0.5, dtype=torch.float64)
    if init == "lin":
        return half, math.pi * n
    if init == "inv":
        return half, (N / math.pi) * (N / (2 * n + 1) - 1)
    if init == "real":
        return -(n + 1), torch.zeros(M, dtype=torch.float64)
    if init == "legs":
        return half, _legs_imag(M)
    raise ValueError(f"unknown S4D init {init!r}; valid: {', '.join(INITS)}")


def s4d_init(H: int, M: int, init: str = "lin", dt_min: float = 1e-3, dt_max: float = 1e-1, generator=None):
    """Initial parameters as float32 tensors: log_dt log-uniform in [dt_min, dt_max], A from the
    `init` family ("lin", "inv", "real", "legs") shared by all heads, C complex standard normal, D ~ N(0, 1)."""
    re, im = _eigenvalues(init, M)
    u = torch.rand(H, generator=generator, dtype=torch.float64)
    log_dt = math.log(dt_min) + u * (math.log(dt_max) - math.log(dt_min))
    C = torch.randn(H, M, dtype=torch.complex64, generator=generator)
    return {
        "log_dt": log_dt.float(),
        "log_A_real": torch.log(-re).float().expand(H, M).clone(),
        "A_imag": im.float().expand(H, M).clone(),
        "C": torch.view_as_real(C).clone(),
        "D": torch.randn(H, generator=generator),
    }


def s4d_discretize(log_dt, log_A_real, A_imag, C):
    """Zero-order hold: dA = exp(dt A), W = C (exp(dt A) - 1) / A, with A = -exp(log_A_real) + i A_imag.
    log_dt [H]; log_A_real, A_imag [H, M]; C [H, M, 2]. Returns (dA, W), complex [H, M]
    (complex128 if any input is float64, else complex64: half precision is upcast)."""
    double = any(x.dtype == torch.float64 for x in (log_dt, log_A_real, A_imag, C))
    real = torch.float64 if double else torch.float32
    A = torch.complex(-torch.exp(log_A_real.to(real)), A_imag.to(real))  # [H, M]
    dtA = torch.exp(log_dt.to(real))[:, None] * A
    # expm1 keeps W accurate when |dt A| is tiny (dt ~ 1e-3), where exp - 1 cancels in fp32.
    W = torch.view_as_complex(C.to(real).contiguous()) * torch.expm1(dtA) / A
    return torch.exp(dtA), W
