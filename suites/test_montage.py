"""Montage: a grid of overlapping fields, as automation takes them; every piece placed by
registering its overlaps with its neighbours."""

import pytest

pytestmark = pytest.mark.montage


def test_montage_neighbours_within_the_overlap(stage_checks, verify, attach_figure):
    """Neighbouring pieces are off each other by less than the overlap width: the montage stitches."""
    attach_figure("montage")
    verify(stage_checks["montage.neighbour_error_max_nm"])


def test_every_montage_piece_is_placed(stage_checks, verify, attach_figure):
    """Every piece is tied to the first by registered overlaps: none falls out of the montage."""
    attach_figure("montage")
    verify(stage_checks["montage.unplaced_pieces"])
