"""Generated gRPC/protobuf modules for ``proto/hetsearch/v1/gallery.proto``.

Regenerate with ``python -m hetsearch.protogen`` after editing the .proto file.
"""
