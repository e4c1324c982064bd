"""``flowrt run`` holds a connection per IDLE flow and per polling flow between polls: it
raises its soft limit of open files to the hard one."""

from __future__ import annotations

import resource

import pytest

from flowrt.runtime.process import allow_open_files


def test_the_soft_limit_of_open_files_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip("needs a finite hard limit above 256")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        allow_open_files()
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
