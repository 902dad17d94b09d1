"""One full simulated run per alignment case: the certified case must be the built one."""

import pytest

from conftest import certify_sim


@pytest.mark.parametrize("letter", list("abcdef"))
def test_each_case_is_certified(letter, case_config, tmp_path):
    analysis, certificate, _ = certify_sim(case_config(letter), tmp_path / "rec")
    assert not analysis.failed, analysis.failed
    assert certificate.case == letter, certificate.reasons
    assert certificate.accepted == (letter != "f")
