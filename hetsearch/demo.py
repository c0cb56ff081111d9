"""``hetsearch demo`` (filled in as the pipeline grows)."""


def register(sub) -> None:
    return None
