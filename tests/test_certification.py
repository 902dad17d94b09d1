"""The results-v1 case rule and acceptance."""

import dataclasses
import itertools

import pytest

from stage_acceptance.certification import CASE_TITLES, PairVerdict, alignment_case

NAMES = ("target_reported", "target_actual", "reported_actual")


def verdicts(agree, consistent=(True, True, True)):
    return {n: PairVerdict(n, a, c, 0.0, ()) for n, a, c in zip(NAMES, agree, consistent)}


@pytest.mark.parametrize("agree", list(itertools.product([True, False], repeat=3)))
def test_case_rule_for_every_agreement_pattern(agree):
    tr, ta, ra = agree
    expected = {3: "a", 2: "a"}.get(sum(agree))
    if expected is None:
        expected = "b" if tr else "c" if ta else "d" if ra else "e"
    assert alignment_case(verdicts(agree)) == expected


@pytest.mark.parametrize("inconsistent", range(3))
@pytest.mark.parametrize("agree", [(True, True, True), (False, False, False), (True, False, False)])
def test_any_inconsistent_pair_gives_f(agree, inconsistent):
    consistent = [True, True, True]
    consistent[inconsistent] = False
    assert alignment_case(verdicts(agree, consistent)) == "f"


def test_titles():
    assert CASE_TITLES["f"] == "Misalignment: inconsistent"
    assert sorted(CASE_TITLES) == list("abcdef")


@pytest.mark.parametrize("undecided", range(3))
@pytest.mark.parametrize("how", ["agreement", "consistency", "missing"])
def test_one_undecided_pair_certifies_nothing(undecided, how):
    pairs = verdicts((True, True, True))
    name = NAMES[undecided]
    changes = {"agreement": {"agree": None, "rms_nm": None}, "consistency": {"consistent": None},
               "missing": {"missing": (("x step scatter", "needs >= 4 plain steps"),)}}[how]
    pairs[name] = dataclasses.replace(pairs[name], **changes)
    assert not pairs[name].decided
    assert alignment_case(pairs) is None


def test_an_undecided_pair_is_not_certified_even_beside_an_inconsistent_one():
    pairs = verdicts((True, True, True), (False, True, True))
    pairs["reported_actual"] = dataclasses.replace(pairs["reported_actual"], agree=None)
    assert alignment_case(pairs) is None
