"""CPU cost of `polymarket-kafka healthcheck` and `--help`, next to a plain stdlib request.

    .venv/bin/python bench/cli_startup.py [--rounds 7] [--before DIR]

The container runs `polymarket-kafka healthcheck` every 15 s, so its start-up is paid all day.
Each command runs as a child process, one after the other in every round (so a busy machine
slows all of them alike); the user+system CPU of each child is read with
`getrusage(RUSAGE_CHILDREN)`. A tiny local HTTP server answers 200 for the healthcheck and
for the baseline, a plain `urllib.request.urlopen` of the same URL. Prints the medians.
`--before DIR` (a checkout of an older commit, e.g. made with `git worktree add`) adds the
same commands run from that checkout (`PYTHONPATH=DIR`) to every round, for a side-by-side
comparison on the same busy machine. Both packages are byte-compiled first (`compileall`),
as `pip install` does in the image: with PYTHONDONTWRITEBYTECODE=1 and no `.pyc`, every run
would compile the package again and measure the compiler.
"""

from __future__ import annotations

import argparse
import http.server
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status":"ok"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def cpu_seconds(command: list[str], env: dict[str, str], cwd: str) -> float:
    """User+system CPU seconds of one run of `command` as a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, capture_output=True, env=env, cwd=cwd, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--before", default=None, help="a checkout to compare with")
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
    package = Path(__file__).resolve().parents[1] / "polymarket_kafka"
    for directory in [package, *([Path(args.before) / package.name] if args.before else [])]:
        subprocess.run([py, "-m", "compileall", "-q", str(directory)], check=True)
    # Children run in an empty directory: `python -m` puts the working directory first on
    # sys.path (a checkout there would shadow PYTHONPATH), and no `.env` is read.
    cwd = tempfile.mkdtemp(prefix="cli-startup-")
    env = dict(os.environ, HTTP_PORT="9")  # the discard port: refused on loopback
    runs = {name: (command, env) for name, command in commands.items()}
    if args.before is not None:
        before_env = dict(env, PYTHONPATH=args.before)
        for name, command in commands.items():
            if not name.startswith("stdlib"):
                runs[f"before: {name}"] = (command, before_env)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (command, run_env) in runs.items():
            seconds[name].append(cpu_seconds(command, run_env, cwd))
    print(f"CPU seconds per run (user+sys), median of {args.rounds}:")
    for name, values in seconds.items():
        print(f"  {name:<44} {statistics.median(values):.3f}  (min {min(values):.3f})")
    server.shutdown()


if __name__ == "__main__":
    main()
