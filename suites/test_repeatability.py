"""ISO 230-2 unidirectional repeatability from revisits of the same targets."""

import pytest

pytestmark = pytest.mark.repeatability


@pytest.mark.parametrize("axis", ["x", "y"])
def test_repeatability(axis, stage_checks, verify, attach_figure):
    """4 s over visits of the same target from the same direction."""
    attach_figure(f"repeatability-{axis}")
    verify(stage_checks[f"{axis}.repeatability_nm"])
