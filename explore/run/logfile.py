"""A run's own log file (train.log, eval/eval.log) beside the terminal's output."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


@contextlib.contextmanager
def log_to(path: Path) -> Iterator[None]:
    """Also write the `explore` loggers' INFO and above to `path` while the block runs; an
    exception that ends the block is written there too (the entry point prints it on the
    terminal), since the reason a run stopped belongs in its log. Nothing is added when a
    handler already writes to `path` (a study job logs there itself)."""
    root = logging.getLogger()
    if any(getattr(h, "baseFilename", None) == os.path.abspath(path) for h in root.handlers):
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(FORMAT))
    logger = logging.getLogger("explore")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(min(old_level or logging.INFO, logging.INFO))
    try:
        yield
    except Exception as e:
        handler.handle(logger.makeRecord(
            logger.name, logging.ERROR, __file__, 0, "%s: %s", (type(e).__name__, e), None))
        raise
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()
