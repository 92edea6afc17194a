"""Named crash points, for tests of what a daemon that dies part-way leaves behind.

``CRIO_FAST_TEST_CRASH_AT="runpod:3"`` makes the daemon exit at once (``os._exit``, no clean-up of
any kind, as SIGKILL would) when it reaches step 3 of RunPodSandbox. The variable is read once, at
import: unset, ``crash_point`` is a function that returns at once, and nothing else changes.
tests/integration/test_crash_recovery.py crashes at every step of ``STEPS`` in turn and checks that
a restarted daemon leaves nothing behind once every pod is removed.

The steps, in the order an operation reaches them:

runpod (RunPodSandbox)
  1 the record is saved, marked creating; nothing else exists
  2 the pod dir exists
  3 the monitor is spawned and makes the namespaces, waiting at its cgroup gate
  4 the pod and monitor cgroups exist; the gate is still shut
  5 the gate is open, the pod's files are written
  6 the monitor is ready
  7 CNI: the pending result cache entry is written, no plugin has run
  8 CNI: the first plugin's ADD is done
  9 CNI ADD is done and its result cached; the record still says creating
  10 the record says ready; the reply is not sent
createctr (CreateContainer, native handler)
  1 the record is saved, marked creating
  2 its image volumes are mounted, the CREATE is with the monitor, which clones the child
  3 the rootfs chunk is sent
  4 the container cgroup exists; the gate is still shut
  5 the gate is open: the child finishes its set-up
  6 the record is saved, created
startctr (StartContainer)
  1 the container is claimed for the start; nothing is sent
  2 START is answered: the container runs; the record still says created
  3 the record says running
stoppod (StopPodSandbox)
  1 the pod's containers are stopped
  2 CNI: the last plugin's DEL is done (DEL runs in reverse), the others' not
  3 CNI DEL is done
  4 the monitor is shut down
  5 the pod dir's mounts are gone; the record still says ready
removepod (RemovePodSandbox)
  1 the pod is stopped, its containers not yet removed
  2 the first container is removed from its monitor and the node; its record remains
  3 the containers are removed
  4 the pod dir's mounts are gone, its cgroups and dir not yet
  5 the pod dir and cgroups are gone; the record remains
"""

from __future__ import annotations

import os
import sys

STEPS: dict[str, int] = {"runpod": 10, "createctr": 6, "startctr": 3, "stoppod": 5, "removepod": 5}
CRASH_EXIT_CODE = 86
ENVIRONMENT_VARIABLE = "CRIO_FAST_TEST_CRASH_AT"

_target = os.environ.get(ENVIRONMENT_VARIABLE) or None


def crash_point(operation: str, step: int) -> None:
    """Exit the process at once if the test asked to crash at ``operation``:``step``."""
    if _target is not None and _target == f"{operation}:{step}":
        sys.stderr.write(f"crio-fast: crashing at {operation}:{step} ({ENVIRONMENT_VARIABLE})\n")
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)
