"""Embedded demo corpus built from the Python standard library's docstrings.

The corpus is generated locally (never downloaded) so that demos and tests can
train a small language model offline. It is deterministic for a given Python
version and cached on disk after the first call.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

# Pure-Python modules that import quickly and without side effects (no GUI,
# no easter eggs that print or open a browser). Kept sorted so the document
# order, and thus the corpus, is stable.
_STDLIB_MODULES: tuple[str, ...] = tuple(sorted((
    "abc", "argparse", "ast", "base64", "bdb", "bisect", "calendar", "cmd",
    "codecs", "collections", "colorsys", "concurrent.futures", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "dis", "doctest", "email", "email.message", "email.utils",
    "enum", "filecmp", "fileinput", "fnmatch", "fractions", "ftplib",
    "functools", "getopt", "gettext", "glob", "graphlib", "gzip", "hashlib",
    "heapq", "hmac", "html", "html.parser", "http.client", "http.cookiejar",
    "http.cookies", "http.server", "imaplib", "inspect", "io", "ipaddress",
    "json", "json.decoder", "json.encoder", "keyword", "linecache", "locale",
    "logging", "logging.handlers", "lzma", "mailbox", "mimetypes", "netrc",
    "numbers", "operator", "optparse", "os", "pathlib", "pdb", "pickle",
    "pickletools", "pkgutil", "platform", "plistlib", "poplib", "pprint",
    "profile", "pstats", "queue", "quopri", "random", "re", "reprlib",
    "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib",
    "socket", "socketserver", "statistics", "string", "stringprep", "struct",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit",
    "token", "tokenize", "trace", "traceback", "types", "typing", "unittest",
    "unittest.mock", "urllib.parse", "urllib.request", "uuid", "warnings",
    "wave", "weakref", "xml.dom.minidom", "xml.etree.ElementTree", "xml.sax",
    "zipfile", "zipimport",
)))

_MIN_DOC_CHARS = 80
_DOC_SEPARATOR = "\n\n"
# Control characters (other than tab/newline) would make the text awkward to
# inspect and are never meaningful in prose.
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")


def _clean(doc: object) -> str | None:
    if not isinstance(doc, str):
        return None
    text = inspect.cleandoc(doc)
    # Blank lines separate documents, so a docstring's own paragraphs are
    # joined by a single newline to keep one docstring == one document.
    text = _BLANK_LINES.sub("\n", text).strip()
    if len(text) < _MIN_DOC_CHARS or _BAD_CHARS.search(text):
        return None
    return text


def _member_docs(module) -> list[object]:
    """Docstrings of a module and of the classes/functions it defines."""
    docs = [module.__doc__]
    for _, obj in sorted(vars(module).items()):
        # Skip re-exports so each object is visited from its home module only.
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            docs.append(obj.__doc__)
        elif inspect.isclass(obj):
            docs.append(obj.__doc__)
            for _, attr in sorted(vars(obj).items()):
                if isinstance(attr, (staticmethod, classmethod)):
                    attr = attr.__func__
                if inspect.isfunction(attr) or isinstance(attr, property):
                    docs.append(attr.__doc__)
    return docs


def _generate_documents() -> list[str]:
    seen: set[str] = set()
    documents: list[str] = []
    for name in _STDLIB_MODULES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
                raw_docs = _member_docs(module)
        except Exception as exc:  # a missing optional module must not break the corpus
            logger.debug("skipping %s for the demo corpus: %s", name, exc)
            continue
        for raw in raw_docs:
            doc = _clean(raw)
            if doc is not None and doc not in seen:
                seen.add(doc)
                documents.append(doc)
    return documents


def _cache_path() -> Path:
    root = os.environ.get("HF_LLMARCH_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "hf_llmarch"
    return base / f"corpus-py{sys.version_info.major}{sys.version_info.minor}.txt"


def _write_atomically(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache is not secret
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        # Caching is an optimisation; a read-only home must not break training.
        logger.warning("could not cache the demo corpus at %s: %s", path, exc)


def _full_corpus() -> str:
    path = _cache_path()
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    text = _DOC_SEPARATOR.join(_generate_documents())
    _write_atomically(path, text)
    logger.info("generated demo corpus (%d chars) at %s", len(text), path)
    return text


def default_corpus(max_chars: int = 3_000_000) -> str:
    """Return the demo corpus: stdlib docstrings separated by blank lines.

    The text is cut at a document boundary so that it has at most
    ``max_chars`` characters (a single over-long first document is sliced).
    """
    if max_chars <= 0:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    text = _full_corpus()
    if len(text) <= max_chars:
        return text
    cut = text.rfind(_DOC_SEPARATOR, 0, max_chars + 1)
    return text[:cut] if cut > 0 else text[:max_chars]


def corpus_documents(max_chars: int = 3_000_000) -> list[str]:
    """The documents (one cleaned docstring each) of :func:`default_corpus`."""
    return default_corpus(max_chars).split(_DOC_SEPARATOR)
