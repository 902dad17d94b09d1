"""Stand-in ``PyJEM.TEM3``: one shared stage for the whole process."""

import pyjem_standin

STAGE = pyjem_standin.Stage3()


def Stage3():  # noqa: N802 (PyJEM's name)
    """The shared stand-in stage."""
    return STAGE
