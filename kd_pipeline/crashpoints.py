"""Named points where a crash test can stop a writer deterministically (tests/test_crash_resume.py).

With `KD_PAUSE_AT=<name>` in the environment, the process that reaches `pause_point(<name>)` writes its pid
to `$KD_PAUSE_FILE` and sleeps until it is killed, so `kill -9` lands exactly there rather than at a
random moment. Without the variable a pause point is one dict lookup. Names used:
    store_created                  arrays and manifest written, no block yet
    block_array:<b>:<array>        mid-block: block b's chunk of <array> written, the next arrays' not yet
    block_chunks:<b>               block b's chunks written, its marker not yet
    marker_tmp:<b>                 block b's marker in its temp file, not yet renamed into place
    samples_written                samples.parquet in place, `complete` still false
    manifest_tmp                   the completed manifest in zarr.json's temp file, not yet renamed
    checkpoint:<stage>:<step>      a training checkpoint saved at that step
"""

from __future__ import annotations

import os
import time


def pause_point(name: str) -> None:
    if os.environ.get("KD_PAUSE_AT") != name:
        return
    flag = os.environ.get("KD_PAUSE_FILE")
    if flag:
        tmp = f"{flag}.tmp"
        with open(tmp, "w") as f:
            f.write(str(os.getpid()))
        os.replace(tmp, flag)
    while True:  # wait here for the test's kill -9
        time.sleep(60)
