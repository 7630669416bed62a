"""Loads the compiled native core once and initialises it.

Every module that calls C goes through `ffi` and `lib` from here, so a missing build fails in
one place with a message that says how to fix it.
"""
try:
    from cluster._native import ffi, lib
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "Cairn's native core (cluster._native) is not built: run `pip install -e .` "
        "from the repository root (it needs a C compiler)"
    ) from exc

lib.cairn_init()

__all__ = ["ffi", "lib"]
