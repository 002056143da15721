"""How the terminal shows a gate: a value just below its threshold must not print as equal to it."""

from __future__ import annotations

from flows.cli_output import format_against
from flows.cli_review import gate_table


def test_a_near_miss_gets_the_digits_that_tell_it_from_its_threshold():
    assert format_against(0.9495833, 0.95) == ("0.9496", "0.9500")
    assert format_against(0.938, 0.9) == ("0.938", "0.900")  # three digits when they already differ
    assert format_against(0.95, 0.95) == ("0.950", "0.950")  # a pass at the threshold stays as it is
    assert format_against(None, 0.95) == ("-", "0.950")
    assert format_against(20.0, 1) == ("20.000", "1")


def test_the_gate_table_shows_the_shortfall_of_a_near_miss():
    table = gate_table(
        [{"name": "min_locality_unchanged", "passed": False, "observed": 0.9495833, "threshold": 0.95}],
        "gate",
    )
    observed, threshold = (next(iter(column.cells)) for column in table.columns[2:])
    assert (observed, threshold) == ("0.9496", "0.9500")
