"""Server options that need no running server."""

from __future__ import annotations

import os

import pytest

from cycada.errors import ServingError
from cycada.serving.server import parse_cpus


def test_parse_cpus_takes_lists_and_ranges_of_this_machines_cpus():
    allowed = os.sched_getaffinity(0)
    first = min(allowed)
    assert parse_cpus(str(first)) == {first}
    assert parse_cpus(f"{first}-{first}") == {first}
    assert parse_cpus(",".join(map(str, sorted(allowed)))) == allowed


@pytest.mark.parametrize("text", ["x", "1-a", "", "100000"])
def test_parse_cpus_names_the_bad_value(text):
    with pytest.raises(ServingError, match="--cpus"):
        parse_cpus(text)
