"""CPU cost of `polymarket-kafka healthcheck` and `--help`, next to a plain stdlib request.

    .venv/bin/python bench/cli_startup.py [--rounds 7]

The container runs `polymarket-kafka healthcheck` every 15 s, so its start-up is paid all day.
Each command runs as a child process, one after the other in every round (so a busy machine
slows all of them alike); the user+system CPU of each child is read with
`getrusage(RUSAGE_CHILDREN)`. A tiny local HTTP server answers 200 for the healthcheck and
for the baseline, a plain `urllib.request.urlopen` of the same URL. Prints the medians.
"""

from __future__ import annotations

import argparse
import http.server
import os
import resource
import statistics
import subprocess
import sys
import threading


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status":"ok"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def cpu_seconds(command: list[str], env: dict[str, str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, capture_output=True, env=env, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    py = sys.executable
    commands = {
        "healthcheck (answer 200)": [py, "-m", "polymarket_kafka", "healthcheck", "--url", url],
        "healthcheck (config, port closed)": [py, "-m", "polymarket_kafka", "healthcheck"],
        "--help": [py, "-m", "polymarket_kafka", "--help"],
        "stdlib urllib request": [
            py,
            "-c",
            f"import urllib.request; urllib.request.urlopen('{url}/health/ready').read()",
        ],
    }
    env = dict(os.environ, HTTP_PORT="9")  # the discard port: refused on loopback
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, command in commands.items():
            seconds[name].append(cpu_seconds(command, env))
    print(f"CPU seconds per run (user+sys), median of {args.rounds}:")
    for name, values in seconds.items():
        print(f"  {name:<36} {statistics.median(values):.3f}  (min {min(values):.3f})")
    server.shutdown()


if __name__ == "__main__":
    main()
