"""`lma3d train` as its own process with a fault injected (the launcher's test hook), for tests that need a driver
outside the test process (its Ray session is the cluster's, not the test session's):

    python tests/train_driver.py '{"kind": "oom", "rank": 1, "step": 3, "marker": "/tmp/x", "bytes": 1e9}' ARGS...
"""

import functools
import json
import sys

from jobs.training import launcher
from jobs.verbs import train

if __name__ == "__main__":
    fault = json.loads(sys.argv[1]) or None
    launcher.launch = functools.partial(launcher.launch, fault_injection=fault)
    raise SystemExit(train.main(sys.argv[2:]))
