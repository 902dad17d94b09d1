"""The alignment case of Figure 2 (a-f) and its acceptance for the holder."""

import pytest

pytestmark = pytest.mark.certification


def test_certified_case_is_accepted(stage_certificate, attach_figure):
    """Passes iff the certified case is one of the holder's accepted_cases."""
    for name in ("hysteresis-x", "hysteresis-y", "cross"):
        attach_figure(name)
    cert = stage_certificate
    assert cert.accepted, f"case {cert.case} ({cert.title}) not accepted: " + "; ".join(cert.reasons)
