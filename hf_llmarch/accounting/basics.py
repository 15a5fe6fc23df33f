"""The (matmul weights, other parameters) pair every count is made of."""

# (matmul weights, other parameters) of one module.
Params = tuple[int, int]


def linear(n_in: int, n_out: int, bias: bool = False) -> Params:
    return n_in * n_out, n_out if bias else 0


def add(*parts: Params) -> Params:
    return sum(p[0] for p in parts), sum(p[1] for p in parts)
