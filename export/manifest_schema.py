"""JSON Schema (draft 2020-12) of the bundle manifest that ``hetsearch export`` writes.

:mod:`hetsearch.manifest` validates what every reader needs (the SDK checks it without any schema
library); this schema is the complete, stricter description of what the exporter produces, for
tools outside Python and for the tests. ``python -m hetsearch.export.manifest_schema`` prints it.
"""

from __future__ import annotations

import json

from hetsearch.manifest import FORMATS, PRECISIONS  # the names are declared once, there

_HEX64 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_PRECISION = {"enum": list(PRECISIONS)}
_FORMAT = {"enum": list(FORMATS)}
_STATUS = {"enum": ["passed", "failed", "skipped", "error"]}
_NUM_OR_NULL = {"type": ["number", "null"]}

_CHECK_PART = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": _STATUS,
        "reason": {"type": "string"},
        "cos_mean": _NUM_OR_NULL,
        "cos_min": _NUM_OR_NULL,
        "max_abs_diff": _NUM_OR_NULL,
        "n": {"type": "integer", "minimum": 0},
        "thresholds": {"type": "object", "additionalProperties": {"type": "number"}},
        "r1": _NUM_OR_NULL,
        "reference_r1": _NUM_OR_NULL,
        "gallery_r1": _NUM_OR_NULL,
        "delta": _NUM_OR_NULL,
        "delta_se": _NUM_OR_NULL,
        "note": {"type": "string"},
        "max_drop": _NUM_OR_NULL,
        "ratio_to_gallery": _NUM_OR_NULL,
        "min_ratio": _NUM_OR_NULL,
    },
}

MANIFEST_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://hetsearch.invalid/schemas/bundle-manifest-v1.json",
    "title": "hetsearch bundle manifest (schema_version 1)",
    "type": "object",
    "required": ["schema_version", "model_id", "space_id", "architecture", "macs", "params", "input", "output",
                 "files", "checks", "latency", "tools", "failures"],
    "properties": {
        "schema_version": {"const": 1},
        "model_id": {"type": "string", "minLength": 1},
        "space_id": {"type": "string", "pattern": "^sp1-d[0-9]+-[nu]-[0-9a-f]{20}$"},
        "architecture": {
            "type": "object",
            "required": ["family", "input_size", "in_channels", "embed_dim"],
            "properties": {
                "family": {"type": "string"},
                "input_size": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2,
                               "maxItems": 2},
                "in_channels": {"enum": [1, 3]},
                "embed_dim": {"type": "integer", "minimum": 1},
            },
        },
        "macs": {"type": "integer", "minimum": 0},
        "params": {"type": "integer", "minimum": 0},
        "input": {
            "type": "object",
            "required": ["height", "width", "channels", "layout", "dtype", "value_range", "resize", "color"],
            "properties": {
                "height": {"type": "integer", "minimum": 1},
                "width": {"type": "integer", "minimum": 1},
                "channels": {"enum": [1, 3]},
                "layout": {"enum": ["NCHW", "NHWC"]},
                "dtype": {"const": "float32"},
                "value_range": {"const": [0, 255]},
                "resize": {"const": "bilinear"},
                "color": {"enum": ["grayscale", "rgb"]},
                "name": {"const": "pixels"},
                "batch": {"const": 1},
            },
        },
        "output": {
            "type": "object",
            "required": ["dim", "l2_normalized", "name"],
            "properties": {
                "dim": {"type": "integer", "minimum": 1},
                "l2_normalized": {"const": True},
                "name": {"const": "embedding"},
                "dtype": {"const": "float32"},
            },
        },
        "files": {
            "type": "array",
            "uniqueItems": True,
            "items": {
                "type": "object",
                "required": ["path", "format", "precision", "sha256", "bytes", "runtime"],
                "properties": {
                    "path": {"type": "string",
                             "pattern": f"^model-({'|'.join(PRECISIONS)})(-mediapipe)?\\.(onnx|tflite|mlpackage)$"},
                    "format": _FORMAT,
                    "precision": _PRECISION,
                    "sha256": _HEX64,
                    "bytes": {"type": "integer", "minimum": 1},
                    "runtime": {"enum": ["onnxruntime", "litert", "coreml", "mediapipe"]},
                    "layout": {"enum": ["NCHW", "NHWC"]},
                    "input_name": {"type": "string"},
                    "output_name": {"type": "string"},
                    "opset": {"type": "integer", "minimum": 7},
                    "signature": {"type": "string"},
                    "deployment_target": {"type": "string"},
                    "compute_precision": {"enum": ["float32", "float16"]},
                    "quantization": {"type": "string"},
                    "calibration_images": {"type": "integer", "minimum": 1},
                    "float_nodes": {"type": "array", "items": {"type": "string"}},
                    "widened_ranges": {"type": "integer", "minimum": 0},
                    "int8_recipe": {"type": "object", "required": ["parity_on_calibration_images", "met"]},
                    "int8_training": {"enum": ["ptq", "qat"]},
                    "export_seconds": {"type": "number", "minimum": 0},
                    "input_dtype": {"enum": ["float32", "uint8"]},
                    "input_color": {"enum": ["grayscale", "rgb"]},
                    "consumer": {"type": "string"},
                },
                "allOf": [
                    {"if": {"properties": {"format": {"const": "onnx"}}},
                     "then": {"required": ["opset"], "properties": {"path": {"pattern": "\\.onnx$"}}}},
                    {"if": {"properties": {"format": {"const": "tflite"}}},
                     "then": {"properties": {"path": {"pattern": "\\.tflite$"}}}},
                    {"if": {"properties": {"format": {"const": "coreml"}}},
                     "then": {"properties": {"path": {"pattern": "\\.mlpackage$"}}}},
                    {"if": {"properties": {"format": {"const": "mediapipe"}}},
                     "then": {"properties": {"path": {"pattern": "-mediapipe\\.tflite$"}, "layout": {"const": "NHWC"},
                                             "input_dtype": {"const": "uint8"}}}},
                ],
            },
        },
        "checks": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["status"],
                "properties": {
                    "status": _STATUS,
                    "reason": {"type": "string"},
                    "format": _FORMAT,
                    "precision": _PRECISION,
                    "parity": _CHECK_PART,
                    "compat": _CHECK_PART,
                    "spec": _CHECK_PART,
                },
            },
        },
        "latency": {"type": "object", "additionalProperties": {"type": "object"}},
        "tools": {"type": "object", "additionalProperties": {"type": ["string", "null"]},
                  "required": ["torch", "onnx", "onnxruntime", "litert-torch", "ai-edge-litert", "coremltools"]},
        "failures": {
            "type": "array",
            "items": {"type": "object", "required": ["format", "precision", "reason"],
                      "properties": {"format": _FORMAT, "precision": _PRECISION,
                                     "reason": {"type": "string", "minLength": 1},
                                     "stage": {"enum": ["export", "checks"]}}},
        },
        "source": {"type": "object", "properties": {"kind": {"enum": ["gallery", "query"]},
                                                    "weights_sha256": _HEX64,
                                                    "qat": {"type": "object", "required": ["scheme"]}}},
        "check_config": {"type": "object"},
        "exported_at": {"type": "string"},
    },
}


def schema_problems(manifest) -> list[str]:
    """Everything the JSON Schema finds wrong (needs the ``jsonschema`` package)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(MANIFEST_SCHEMA)
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))]


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(MANIFEST_SCHEMA, indent=2))
