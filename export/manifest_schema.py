"""JSON Schema (draft 2020-12) of the bundle manifest that ``hetsearch export`` writes.

The schema is not written here: :func:`hetsearch.manifest.json_schema` derives it from the manifest's typed
declarations, the same ones :func:`hetsearch.manifest.validation_problems` checks (``strict=True`` is the
exporter's contract this schema describes; the default is what every reader needs). This module is for tools
outside Python and for the tests. ``python -m hetsearch.export.manifest_schema`` prints it.
"""

from __future__ import annotations

import json

from hetsearch.manifest import json_schema

MANIFEST_SCHEMA: dict = json_schema()


def schema_problems(manifest) -> list[str]:
    """Everything the JSON Schema finds wrong (needs the ``jsonschema`` package)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(MANIFEST_SCHEMA)
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))]


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(MANIFEST_SCHEMA, indent=2))
