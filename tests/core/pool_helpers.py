"""Functions for render pool tests to run in its workers (a module light to import)."""

import time


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def allocate(size: int) -> int:
    return len(bytearray(size))
