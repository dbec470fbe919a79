"""The one error type of the data layer."""


class DataError(ValueError):
    """Bad input data: the message names the problem and what to do about it."""
