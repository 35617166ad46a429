"""The neighbour of the 'beside a neighbour' benchmark, in its own process.

``python -m benchmarks.neighbour_child URL TOKEN RATE`` sends ``RATE`` GETs a second on a
fixed schedule until terminated, then prints ``[[monotonic time, accepted], ...]``.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.error
import urllib.request


def main() -> None:
    url, token, rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
    headers = {"Authorization": f"Bearer {token}", "Version": "2021-04-15"}
    sent: list[tuple[float, bool]] = []

    def stop(*_: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    start = time.monotonic()
    n = 0
    try:
        while True:
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            n += 1
            request = urllib.request.Request(url, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    response.read()
                    accepted = True
            except urllib.error.HTTPError as error:
                accepted = error.code != 429
            sent.append((time.monotonic(), accepted))
    finally:
        print(json.dumps(sent), flush=True)


if __name__ == "__main__":
    main()
