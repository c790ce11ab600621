"""Server options that need no running server."""

from __future__ import annotations

import os

import pytest

from cycada.errors import ConfigError, ServingError
from cycada.serving.server import parse_cpus


def test_parse_cpus_takes_lists_and_ranges_of_this_machines_cpus():
    allowed = os.sched_getaffinity(0)
    first = min(allowed)
    assert parse_cpus(str(first)) == {first}
    assert parse_cpus(f"{first}-{first}") == {first}
    assert parse_cpus(",".join(map(str, sorted(allowed)))) == allowed


@pytest.mark.parametrize("text", ["x", "1-a", "", "100000"])
def test_parse_cpus_names_the_bad_value(text):
    with pytest.raises(ConfigError, match="--cpus"):
        parse_cpus(text)


@pytest.mark.parametrize(
    "name",
    [
        "pytriton/tritonserver/../../../escaped.txt",
        "pytriton/tritonserver//etc/escaped.txt",
        "nvidia_pytriton.libs/../../escaped.so",
    ],
)
def test_wheel_members_outside_the_install_folder_are_refused(tmp_path, name):
    """Zip slip: a crafted wheel must not write anywhere but the install folder."""
    import zipfile

    from cycada.serving.server_install import _unpack_server

    wheel = tmp_path / "nvidia_pytriton-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pytriton/tritonserver/bin/tritonserver", "#!/bin/sh\n")
        archive.writestr(name, "escaped")
    home = tmp_path / "deep" / "er" / "opt" / "tritonserver"
    with pytest.raises(ServingError, match="would be written outside"):
        _unpack_server(home, wheel)
    assert not list(tmp_path.rglob("escaped*")) and not home.exists()
    assert not list(home.parent.glob(".tritonserver.*"))  # the staging folder is gone too
