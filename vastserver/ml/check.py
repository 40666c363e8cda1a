"""Validating a model bundle in a fresh process, without importing xgboost here.

``serve`` checks each experiment arm's bundle before it forks its workers; importing
:mod:`vastserver.ml.model` (which imports xgboost and numpy at the top) in that parent would
initialise xgboost in every forked worker. This module, and :class:`ModelError`, import
neither: the spawned child imports :mod:`vastserver.ml.model` itself.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

__all__ = ["ModelError", "check_bundle"]


class ModelError(Exception):
    """A model bundle that cannot be served (the message says why)."""


def _check_in_child(path: str) -> dict[str, Any]:
    from vastserver.ml.model import ModelBundle  # in the spawned child only

    try:
        bundle = ModelBundle.load(path)
    except ModelError as e:
        return {"error": str(e)}
    except Exception as e:  # report anything else as a bad bundle, with its type
        return {"error": f"model bundle {path}: {type(e).__name__}: {e}"}
    return {
        "version": bundle.version,
        "schema_version": bundle.schema.version,
        "click_model": bundle.click_booster is not None,
        "created_at": bundle.metadata.get("created_at"),
    }


def check_bundle(path: Path | str, timeout_s: float = 120.0) -> dict[str, Any]:
    """Validate a bundle like :meth:`~vastserver.ml.model.ModelBundle.load`, but in a fresh
    ``spawn`` process, so the caller's process never imports xgboost (safe to ``fork``
    workers afterwards). Returns ``{"version", "schema_version", "click_model",
    "created_at"}``; raises ModelError when the bundle is bad or the check does not finish
    in ``timeout_s``."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        pending = pool.apply_async(_check_in_child, (str(path),))
        try:
            result: dict[str, Any] = pending.get(timeout_s)
        except multiprocessing.TimeoutError:
            raise ModelError(f"model bundle {path}: check timed out after {timeout_s} s") from None
    if "error" in result:
        raise ModelError(str(result["error"]))
    return result
