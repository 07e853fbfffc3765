"""What a handler raises to leave its record on the queue."""


class RetryLater(Exception):  # noqa: N818  (an instruction, not an error condition)
    """Not done yet: leave the record on the queue. It comes back after `delay` seconds,
    or, when `delay` is None, after the runtime's backoff for its receive count."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        self.reason = reason
        self.delay = delay
        super().__init__(reason)


class UnhandledContract(Exception):
    """A valid message of a contract this worker has no handler for."""
