"""The layer-pattern grammar: one string describes any stack of (mixer, FFN) layers.

    pattern := item (" " item)*
    item    := layer | "(" pattern ")x" N
    layer   := mixer ["/" FFN]
    mixer   := MIXER | "par(" MIXER ("," MIXER)+ ")"

`par(attn,mamba2)` runs its mixers side by side on the same normed input and sums their outputs
(Falcon-H1's layer); `mixers/parallel.py` says which combinations a cache can hold.

`expand_pattern("(retention/moe attn)x2", default_ffn="mlp")` gives
`[("retention", "moe"), ("attn", "mlp"), ("retention", "moe"), ("attn", "mlp")]`, and
`compress_pattern` turns the expanded lists back into the shortest `(unit)xN` string.
"""

import re

# A par(...) layer is one token (its parentheses are not a repeat group); then groups and plain layers.
_TOKEN = re.compile(r"par\([^()]*\)(?:/[^\s()]+)?|\(|\)x(\d+)|[^\s()]+")
PARALLEL_PREFIX = "par("


def parallel_parts(mixer: str) -> list[str] | None:
    """The mixers of a `par(a,b)` name, or None for a plain mixer name."""
    if not (mixer.startswith(PARALLEL_PREFIX) and mixer.endswith(")")):
        return None
    return mixer[len(PARALLEL_PREFIX) : -1].split(",")


def _canonical_mixer(mixer: str, pattern: str) -> str:
    """`par( attn , mamba2 )` -> `par(attn,mamba2)`: one spelling per stack, so config.json compares equal."""
    parts = parallel_parts(mixer)
    if parts is None:
        return mixer
    parts = [part.strip() for part in parts]
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"layer_pattern {pattern!r}: {mixer!r} must name at least two mixers, e.g. 'par(attn,mamba2)'")
    return PARALLEL_PREFIX + ",".join(parts) + ")"


def _tokenize(pattern: str) -> list[str]:
    tokens, pos = [], 0
    for match in _TOKEN.finditer(pattern):
        gap = pattern[pos : match.start()]
        if gap.strip():
            raise ValueError(f"layer_pattern {pattern!r}: cannot parse {gap.strip()!r} at position {pos}")
        tokens.append(match.group(0))
        pos = match.end()
    if pattern[pos:].strip():
        raise ValueError(f"layer_pattern {pattern!r}: cannot parse {pattern[pos:].strip()!r}")
    return tokens


def _parse(tokens: list[str], i: int, pattern: str, default_ffn: str, depth: int) -> tuple[list, int]:
    layers = []
    while i < len(tokens):
        tok = tokens[i]
        if tok == "(":
            inner, i = _parse(tokens, i + 1, pattern, default_ffn, depth + 1)
            if i >= len(tokens) or not tokens[i].startswith(")x"):
                raise ValueError(f"layer_pattern {pattern!r}: '(' is not closed by ')xN'")
            repeat = int(tokens[i][2:])
            if repeat < 1:
                raise ValueError(f"layer_pattern {pattern!r}: repeat count must be >= 1, got {repeat}")
            layers += inner * repeat
            i += 1
        elif tok.startswith(")"):
            if depth == 0:
                raise ValueError(f"layer_pattern {pattern!r}: unmatched ')'")
            return layers, i
        else:
            mixer, _, ffn = tok.partition("/")
            mixer = _canonical_mixer(mixer, pattern)
            if not mixer:
                raise ValueError(f"layer_pattern {pattern!r}: empty mixer name in {tok!r}")
            layers.append((mixer, ffn or default_ffn))
            i += 1
    if depth:
        raise ValueError(f"layer_pattern {pattern!r}: '(' is not closed by ')xN'")
    return layers, i


def expand_pattern(pattern: str, default_ffn: str = "mlp") -> list[tuple[str, str]]:
    """Expand a pattern string into a list of (mixer, ffn) pairs, one per layer."""
    layers, _ = _parse(_tokenize(pattern), 0, pattern, default_ffn, 0)
    if not layers:
        raise ValueError(f"layer_pattern {pattern!r} describes no layer")
    return layers


def compress_pattern(mixer_types: list[str], ffn_types: list[str]) -> str:
    """The shortest `(unit)xN` form of the per-layer lists (or the plain list if nothing repeats)."""
    items = [f"{m}/{f}" for m, f in zip(mixer_types, ffn_types)]
    n = len(items)
    for unit in range(1, n // 2 + 1):
        if n % unit == 0 and items[:unit] * (n // unit) == items:
            body = " ".join(items[:unit])
            return f"({body})x{n // unit}"
    return " ".join(items)
