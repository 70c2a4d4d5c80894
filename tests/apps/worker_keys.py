"""The Redis keys and queue of tests/apps/worker_app.py, importable without importing the app.

Importing the app installs the worker helper, whose publish-time stamp then applies to every
producer in the process: a test file that only needs these names must not do that at collection.
"""

from __future__ import annotations

import os

QUEUE = os.environ.get("SAFE_QUEUE", "safe")
STARTED = "started"  # HASH task id -> times a worker began it
DONE = "done"  # HASH task id -> times it ran to the end
READY = "ready"  # SET of worker hostnames that finished starting
AT_SIGTERM = "at_sigterm"  # LIST of "hostname:running tasks" when a worker got its shutdown signal
PUBLISHED_AT = "published_at"  # LIST of the publish-time header each run of retry_once saw
