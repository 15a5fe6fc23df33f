"""How every op is told its path: a mode argument (from the config), which the op's environment
variable overrides when it says "auto"; a bad value raises a ValueError naming where it came from."""

import os


def requested_mode(op: str, mode: str, valid: tuple[str, ...], env_var: str) -> tuple[str, str]:
    """(mode, its source): `mode`, or for "auto" the value of `env_var` when that is set."""
    _check(op, mode, valid, "mode argument")
    env = os.environ.get(env_var, "").strip()
    if mode != "auto" or not env:
        return mode, "mode argument"
    _check(op, env, valid, env_var)
    return env, env_var


def _check(op: str, mode: str, valid: tuple[str, ...], source: str) -> None:
    if mode not in valid:
        raise ValueError(f"unknown {op} mode {mode!r} (from {source}); valid modes: {', '.join(valid)}")
