"""Errors shared by every part of hetsearch.

Every error a user can cause derives from :class:`HetsearchError`; the command
line prints its message (no traceback) and exits with ``exit_code``.
"""


def shown(value, limit: int = 64) -> str:
    """``repr`` of a user-supplied string for an error message, clipped to ``limit`` characters: a message that
    echoes a 20,000-character gallery name would overflow gRPC's metadata limits and reach the client as
    RESOURCE_EXHAUSTED instead of itself."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


class HetsearchError(Exception):
    """Base class: a problem the user can act on. The message says what and where."""

    exit_code = 2


class DataError(HetsearchError):
    """Input data is missing, unreadable or malformed (names the file or key)."""


class ModelError(HetsearchError):
    """A model, checkpoint or architecture spec is missing, corrupt or inconsistent."""


class SpaceMismatchError(HetsearchError):
    """Embeddings from one embedding space were used against another."""

    def __init__(self, expected: str, got: str, what: str = "embedding"):
        self.expected = expected
        self.got = got
        super().__init__(
            f"{what} is from embedding space {got!r} but {expected!r} was expected; "
            "a query model is compatible only with the gallery model it was trained against"
        )


class BundleError(HetsearchError):
    """An exported bundle (manifest or model files) is missing, invalid or tampered with."""


class IntegrityError(BundleError):
    """A file's sha256 does not match what the manifest vouches for."""


class CheckFailed(HetsearchError):
    """A parity or compatibility check failed (exit code 3)."""

    exit_code = 3


class MissingDependency(HetsearchError):
    """An optional dependency (an extra) is not installed."""

    def __init__(self, module: str, extra: str, purpose: str = ""):
        why = f" for {purpose}" if purpose else ""
        super().__init__(
            f"the Python module {module!r} is needed{why}; install it with "
            f"`pip install 'hetsearch[{extra}]'`"
        )


def require(module: str, extra: str, purpose: str = ""):
    """Import ``module`` or raise :class:`MissingDependency` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependency(module, extra, purpose) from exc
