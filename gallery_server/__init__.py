"""hetsearch.gallery_server — the gRPC gallery service over faiss, durable and guarded by embedding space."""
