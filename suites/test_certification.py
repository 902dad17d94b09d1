"""The alignment case of Figure 2 (a-f), its acceptance for the holder, and the run's one verdict."""

import pytest

pytestmark = pytest.mark.certification


def test_verdict_is_accepted(stage_verdict, attach_figure):
    """Passes iff the run is accepted: a case certified with enough evidence, one of the
    holder's accepted_cases, and every measured metric within its tolerance."""
    for name in ("hysteresis-x", "hysteresis-y", "cross"):
        attach_figure(name)
    if stage_verdict.word != "accepted":
        pytest.fail(stage_verdict.headline, pytrace=False)
