"""The listener raises the open-files limit it needs, up to the hard limit."""

import subprocess
import sys

CHILD = """
import resource
from router.listener import ensure_open_files
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
got = ensure_open_files(4096)
print(got, resource.getrlimit(resource.RLIMIT_NOFILE)[0], ensure_open_files(10 ** 9), hard)
"""


def test_soft_limit_raised_to_what_the_listener_needs_and_capped_by_the_hard_limit():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    got, soft_now, capped, hard = done.stdout.split()
    if int(hard) == -1:  # RLIM_INFINITY: only the kernel's nr_open bounds it
        assert int(got) == int(soft_now) == 4096
    else:
        assert int(got) == int(soft_now) == min(4096, int(hard))
        assert int(capped) == int(hard)  # never above the hard limit
