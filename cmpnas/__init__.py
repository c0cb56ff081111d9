"""hetsearch.cmpnas — training: data, model families, compatibility losses, supernet, search, evaluation."""
