"""A fork server for crash tests: started once per session, it imports torch and the CLI but runs no torch
op (libgomp deadlocks a child forked after its thread pool started), then forks one `kd` process per
request. Each child is a real CLI run in a fresh process that a test can kill -9 within a second or two,
instead of paying a ~10 s interpreter start each time. Protocol: one JSON line {"argv", "env"} in, the
child's pid out. Children are reaped here (SIGCHLD ignored), so a dead child's pid stops existing."""

import json
import os
import signal
import sys
import traceback

import kd_pipeline.cli  # noqa: F401  (imports torch, zarr, pyarrow once, before any fork)

signal.signal(signal.SIGCHLD, signal.SIG_IGN)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(2, 1)  # the child's prints must not mix with the pids on our stdout
            sys.stdout = sys.stderr
            os.environ.update(req["env"])
            sys.argv = req["argv"]
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            kd_pipeline.cli.main()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(3)
    print(pid, flush=True)
