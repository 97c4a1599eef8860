"""Cap one ssh session's data like a WAN flow: run the forced command, relay its stdout at a fixed rate.

Used as the local sshd's ForceCommand (`python3 rate_relay.py MIB_PER_S rrsync -ro ROOT`):
each ssh connection runs its own relay, so N parallel rsyncs get N caps, as N
TCP flows over a per-flow-limited link would. Only what the server sends is
capped (a pull: the data); the command's stdin and exit status pass through.
Standard library only: it runs as the test account with the system python3.
"""

import os
import subprocess
import sys
import time

CHUNK = 1 << 16


def main() -> int:
    rate = float(sys.argv[1]) * (1 << 20)
    proc = subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE)
    assert proc.stdout is not None  # stdout=PIPE
    source, sink = proc.stdout.fileno(), sys.stdout.fileno()
    started, sent = time.monotonic(), 0
    try:
        while True:
            data = os.read(source, CHUNK)
            if not data:
                break
            view = memoryview(data)
            while view:
                view = view[os.write(sink, view) :]
            sent += len(data)
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    except BrokenPipeError:
        proc.kill()
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
