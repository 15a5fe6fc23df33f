"""Console output for the command-line jobs (demo, bench): they report through a logger, and the
entry point shows it as plain lines, progress on stdout and errors on stderr."""

import logging
import sys


def show_on_console(log: logging.Logger) -> logging.Logger:
    """Bind `log` to this call's sys.stdout/sys.stderr (tests swap the streams between calls)."""
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(lambda record: record.levelno < logging.ERROR)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.ERROR)
    for handler in log.handlers[:]:
        log.removeHandler(handler)
    for handler in (out, err):
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return log
