"""Sub-commands of this part (filled in as the part grows)."""


def register(sub) -> None:
    return None
