"""Error type raised for bad data-preparation input."""


class DataError(ValueError):
    """A problem with the user's data or options, reported as one line.

    It subclasses ``ValueError`` so that the ``llmlaunch`` command line can catch it and print
    ``llmlaunch: error: <message>`` without a traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
