"""hetsearch.sdk — the on-device runtime and gallery client. Imports neither torch nor faiss."""
