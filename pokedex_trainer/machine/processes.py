"""Worker processes that never outlive the process that started them."""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent(parent_pid: int, interval: float = 1.0) -> None:
    """In a worker: end this process soon after ``parent_pid`` is gone (kill -9 included).

    A pool's workers hold both ends of their task queue, so a dead parent never shows to them
    as a closed pipe: without this they would wait, idle, until killed by hand.
    """
    def watch() -> None:
        import psutil

        while True:
            time.sleep(interval)
            if os.getppid() != parent_pid or not psutil.pid_exists(parent_pid):
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
