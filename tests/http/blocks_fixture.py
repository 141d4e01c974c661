"""Blocks for tests/http/test_blocks_http.py (JAIL_BLOCKS=tests.http.blocks_fixture:BLOCKS)."""

import datetime


def add(a: int, b: int = 1) -> int:
    """Adds two integers."""
    return a + b


def fail(text: str):
    """Raises ValueError(text)."""
    raise ValueError(text)


def tenant(*, context) -> str:
    """The tenant of the request's context."""
    return context.context.get("tenant")


def stamp(when: datetime.datetime, tags: list[str] | None = None, **extra) -> dict[str, datetime.datetime]:
    return {"when": when}


BLOCKS = {"add": add, "fail": fail, "tenant": tenant, "stamp": stamp}
NOT_A_MAPPING = [add]
BAD_NAME = {"class": add}
