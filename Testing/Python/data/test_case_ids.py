"""Case-id lists (data/case_ids.py): parsing "064-079"-style text and formatting ids back."""

from __future__ import annotations

import pytest

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.case_ids import format_id_spec, parse_id_spec


def test_formatting_joins_runs_keeps_padding_and_lists_other_ids_after():
    assert format_id_spec(["007", "000", "002", "001", "abc", "001"]) == "000-002, 007, abc"
    assert format_id_spec(["9", "10", "11"]) == "9-11"
    assert format_id_spec([]) == ""


def test_formatting_lists_every_numeric_run_and_at_most_the_other_ids_asked_for():
    ids = ["000", "002", "004", "006", "x", "y", "z"]
    assert format_id_spec(ids, most=1) == "000, 002, 004, 006, x, and 2 more"
    assert format_id_spec(ids, most=3) == "000, 002, 004, 006, x, y, z"


@pytest.mark.parametrize("spec", ["064-079", "000,003,010-012", "056-063, 070"])
def test_formatting_is_the_inverse_of_parsing(spec):
    ids = parse_id_spec(spec)
    assert parse_id_spec(format_id_spec(ids)) == sorted(ids)


def test_a_bad_range_is_refused():
    with pytest.raises(SkullVAEError):
        parse_id_spec("079-064")


@pytest.mark.parametrize("spec", ["²-3", "\u0663-\u0665", "0\u0661", "007,\uff11"])
def test_ids_with_digits_other_than_ascii_are_refused_in_one_line(spec):
    """``str.isdigit`` takes "²" (int() then raised a bare ValueError) and Arabic-Indic or full-width digits."""
    with pytest.raises(SkullVAEError, match="not 0-9") as info:
        parse_id_spec(spec)
    assert "\n" not in str(info.value)


def test_formatting_treats_only_ascii_digits_as_numbers():
    assert format_id_spec(["²", "001", "002"]) == "001-002, ²"
