"""Servers for remote-store tests and benchmarks, on 127.0.0.1 only, started and stopped by their users.

- S3: moto's `ThreadedMotoServer` (an in-memory S3 in a thread of this process), with the environment a
  botocore client reads (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION).
  Bucket names need >= 3 characters; no region_name in client kwargs (docs/notes: mkdir fails with one).
- HTTP: `python -m http.server --bind 127.0.0.1 0 --directory DIR` in a subprocess; the port it picked is read
  from its first line.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_PROFILE",
            "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


@contextmanager
def s3_server(bucket: str = "kd-test"):
    """-> (endpoint URL, secret key set in the environment). The environment is restored afterwards."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in AWS_VARS}
    secret = "kd-secret-" + secrets.token_hex(16)
    endpoint = f"http://{host}:{port}"
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="kd-test-key-id", AWS_SECRET_ACCESS_KEY=secret,
                      AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()  # cached clients know another endpoint (the environment is not in the key)
    try:
        import fsspec

        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir(bucket)
        yield endpoint, secret
    finally:
        server.stop()
        S3FileSystem.clear_instance_cache()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def http_server(folder: Path):
    """-> the base URL serving `folder` (read-only, no Range support: a plain static server)."""
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "0", "--directory", str(folder)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port 45678 (http://127.0.0.1:45678/) ..."
        port = int(re.search(r"port (\d+)", line).group(1))
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
