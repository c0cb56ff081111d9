"""Bearer-token auth for the gallery service.

Two optional tokens: *admin* (every RPC) and *read* (searches, list and
describe). When either is configured, every GalleryService call must carry
``authorization: Bearer <token>``: a missing or unknown token gets
UNAUTHENTICATED, the read token on a write gets PERMISSION_DENIED. With only
a read token configured the server is read-only. Health and reflection stay
open (load balancers probe them). Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import os
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from hetsearch.errors import DataError

SERVICE_PREFIX = "/hetsearch.v1.GalleryService/"
READ_METHODS = frozenset({"Search", "BatchSearch", "ListGalleries", "DescribeGallery"})


@dataclass(frozen=True)
class Tokens:
    read: bytes | None = None
    admin: bytes | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.read or self.admin)


def client_token(token_file=None, prefer: str = "admin") -> str | None:
    """The bearer token a client sends: from a token file (``prefer`` first, else the other one),
    else ``$HETSEARCH_TOKEN``, else none."""
    if token_file:
        t = load_token_file(token_file)
        first, second = (t.admin, t.read) if prefer == "admin" else (t.read, t.admin)
        raw = first or second
        return raw.decode() if raw else None
    return os.environ.get("HETSEARCH_TOKEN") or None


def load_token_file(path) -> Tokens:
    """``read=...`` / ``admin=...`` lines, or two bare lines (read, then admin). ``#`` starts a comment."""
    p = Path(path)
    try:
        lines = [ln.strip() for ln in p.read_text().splitlines()]
    except OSError as exc:
        raise DataError(f"cannot read token file {p}: {exc.strerror}") from None
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    found: dict[str, str] = {}
    if lines and all("=" in ln for ln in lines):
        for ln in lines:
            key, _, value = ln.partition("=")
            key = key.strip().lower()
            if key not in ("read", "admin"):
                raise DataError(f"token file {p}: unknown key {key!r} (expected read= and/or admin=)")
            found[key] = value.strip()
    elif len(lines) in (1, 2) and not any("=" in ln for ln in lines):
        found = dict(zip(("read", "admin"), lines)) if len(lines) == 2 else {"admin": lines[0]}
    else:
        raise DataError(f"token file {p}: expected 'read=TOKEN' and 'admin=TOKEN' lines, or two lines (read, admin)")
    for key, value in found.items():
        if len(value) < 8 or any(c.isspace() for c in value):
            raise DataError(f"token file {p}: the {key} token must be at least 8 characters without spaces")
    if found.get("read") and found.get("read") == found.get("admin"):
        raise DataError(f"token file {p}: the read and admin tokens must differ")
    return Tokens(read=found["read"].encode() if found.get("read") else None,
                  admin=found["admin"].encode() if found.get("admin") else None)


def _matches(given: bytes, expected: bytes | None) -> bool:
    # compare_digest takes time independent of where the inputs differ
    return expected is not None and hmac.compare_digest(given, expected)


def _denied(code: grpc.StatusCode, message: str):
    def handler(request, context):
        context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(handler)


class AuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, tokens: Tokens, metrics=None):
        self.tokens = tokens
        self.metrics = metrics

    def _refuse(self, method: str, code: grpc.StatusCode, message: str):
        if self.metrics is not None:
            self.metrics.observe(method, code.name, 0.0)
        return _denied(code, message)

    def intercept_service(self, continuation, handler_call_details):
        full = handler_call_details.method or ""
        if not self.tokens.enabled or not full.startswith(SERVICE_PREFIX):
            return continuation(handler_call_details)
        method = full[len(SERVICE_PREFIX):]
        header = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode("latin-1")
                break
        scheme, _, token = header.partition(" ")
        if not header:
            return self._refuse(method, grpc.StatusCode.UNAUTHENTICATED,
                                "missing credentials: send 'authorization: Bearer <token>'")
        if scheme.lower() != "bearer" or not token.strip():
            return self._refuse(method, grpc.StatusCode.UNAUTHENTICATED,
                                "malformed authorization header: expected 'Bearer <token>'")
        given = token.strip().encode("utf-8", "replace")
        is_admin = _matches(given, self.tokens.admin)
        is_read = _matches(given, self.tokens.read)
        if not (is_admin or is_read):
            time.sleep(0.01)  # blunt brute force a little
            return self._refuse(method, grpc.StatusCode.UNAUTHENTICATED, "invalid token")
        if method not in READ_METHODS and not is_admin:
            return self._refuse(method, grpc.StatusCode.PERMISSION_DENIED,
                                f"{method} needs the admin token; the read token allows only "
                                + ", ".join(sorted(READ_METHODS)))
        return continuation(handler_call_details)
