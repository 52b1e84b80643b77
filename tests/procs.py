"""Child processes for the Python test suites (tests/interop, tests/console): stdout read line by
line on a thread so a test can wait for a line such as "listening on", and stopped by PID."""

import queue
import subprocess
import threading
import time


class Proc:
    """A child process whose stdout lines are read on a thread; stopped by PID at teardown."""

    def __init__(self, args, env=None):
        self.p = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=None, stdin=subprocess.DEVNULL, text=True, env=env
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, needle, timeout=30):
        """The rest of the first line containing `needle` (e.g. the address after "listening on")."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                break
            if needle in line:
                return line.split(needle, 1)[1].strip()
        raise TimeoutError(f"no line containing {needle!r}")

    def stop(self):
        """SIGTERM (graceful shutdown), SIGKILL if it is still running after 15 s."""
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.p.kill()
        self.p.wait(timeout=10)
