"""Pure parts of the warm monitor-server: the launcher's resource limits from its /proc text."""

from __future__ import annotations

import resource

from pyshim.conmon.server import parse_limits

LIMITS = """\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max stack size            8388608              unlimited            bytes     
Max processes             96363                96363                processes 
Max open files            20000                20000                files     
Max nice priority         0                    0                    
Max unknown thing         1                    2                    things    
"""  # noqa: W291 (the kernel pads the columns)


def test_limits_from_proc_text() -> None:
    infinity = resource.RLIM_INFINITY
    assert dict(parse_limits(LIMITS)) == {
        resource.RLIMIT_CPU: (infinity, infinity),
        resource.RLIMIT_STACK: (8388608, infinity),
        resource.RLIMIT_NPROC: (96363, 96363),
        resource.RLIMIT_NOFILE: (20000, 20000),
        resource.RLIMIT_NICE: (0, 0),
    }


def test_our_own_limits_read_back() -> None:
    with open("/proc/self/limits") as text:
        parsed = dict(parse_limits(text.read()))
    assert parsed[resource.RLIMIT_NOFILE] == resource.getrlimit(resource.RLIMIT_NOFILE)
    assert parsed[resource.RLIMIT_STACK] == resource.getrlimit(resource.RLIMIT_STACK)
    assert len(parsed) == 16
    assert parsed[10] == resource.getrlimit(10)  # RLIMIT_LOCKS: Python has no name for it
