"""Structured log lines: ``event=NAME key=value ...`` (values with spaces are quoted)."""

from __future__ import annotations


def _value(v) -> str:
    if isinstance(v, float):
        v = f"{v:.6g}"
    text = str(v)
    if not text or any(c in text for c in ' "=\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def event(name: str, **fields) -> str:
    return " ".join([f"event={name}"] + [f"{k}={_value(v)}" for k, v in fields.items()])
