"""Idle cost of `bcs-notifier run` and start-up time of `bcs-notifier --help`.

Measured in one run against baselines taken in the same run:

- ``--help``: median wall time of N runs, against ``python -c pass`` (the interpreter's own
  start-up) and ``python -c "import click"``.
- ``run`` idle: the service polls an idle simulator (no operation in progress, so the idle
  rate) for ``--duration`` seconds under a real ``NOTIFY_SOCKET`` with the watchdog on; RSS
  and CPU time come from /proc. Baseline: a bare ``python -c "import time; time.sleep()"``
  process measured the same way over the same period.

Usage: python benchmarks/bench_service.py [--duration 180] [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from notifier.simulator.server import Simulator

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def median_wall(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def startup(runs: int) -> None:
    exe = Path(sys.executable).with_name("bcs-notifier")
    bare = median_wall([sys.executable, "-c", "pass"], runs)
    click = median_wall([sys.executable, "-c", "import click"], runs)
    helped = median_wall([str(exe), "--help"], runs)
    print(f"--help start-up (median of {runs}):")
    print(f"  python -c pass        {bare * 1000:7.1f} ms  (baseline)")
    print(f"  python -c 'import click' {click * 1000:4.1f} ms  ({click / bare:.2f}x)")
    print(f"  bcs-notifier --help   {helped * 1000:7.1f} ms  ({helped / bare:.2f}x baseline)")


class NotifyReader:
    def __init__(self, path: Path) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.socket.settimeout(0.2)
        self.messages: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self) -> None:
        while not self.stop.is_set():
            try:
                self.messages.append(self.socket.recv(65536).decode())
            except TimeoutError:
                continue

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.socket.close()


def idle_run(duration: float) -> None:
    with tempfile.TemporaryDirectory() as directory, Simulator(story=(), episodes=False) as sim:
        root = Path(directory)
        config = root / "notifier.toml"
        config.write_text(
            f'[service]\ndatabase = "sqlite:///{root / "state.db"}"\n'
            "[[channels]]\nname = 'hook'\nurls = ['json://127.0.0.1:9/none']\n\n"
            + sim.config_snippet("password", name="sim")
        )
        reader = NotifyReader(root / "notify.sock")
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(root / "notify.sock"),
            "WATCHDOG_USEC": "60000000",
        }
        service = subprocess.Popen(
            [sys.executable, "-m", "notifier", "--config", str(config), "run"],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        baseline = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(100000)"])
        try:
            deadline = time.monotonic() + 60
            while not any("READY=1" in m for m in reader.messages):
                if time.monotonic() > deadline or service.poll() is not None:
                    raise SystemExit("the service did not become ready")
                time.sleep(0.05)
            time.sleep(2)  # first poll and start-up work done
            cpu0, base0, t0 = cpu_seconds(service.pid), cpu_seconds(baseline.pid), time.monotonic()
            rss0 = rss_mib(service.pid)
            peak = rss0
            while time.monotonic() - t0 < duration:
                time.sleep(1)
                peak = max(peak, rss_mib(service.pid))
            elapsed = time.monotonic() - t0
            cpu = cpu_seconds(service.pid) - cpu0
            base_cpu = cpu_seconds(baseline.pid) - base0
            rss1, base_rss = rss_mib(service.pid), rss_mib(baseline.pid)
            polls = sum(1 for r in sim.requests() if "/operation/record" in r.path)
            watchdogs = sum(1 for m in reader.messages if m == "WATCHDOG=1")
        finally:
            service.send_signal(signal.SIGTERM)
            code = service.wait(30)
            baseline.kill()
            baseline.wait(5)
            reader.close()
    print(f"run, idle for {elapsed:.0f} s (poll_interval 60 s, {polls} polls, {watchdogs} pings):")
    print(
        f"  RSS after ready   {rss0:6.1f} MiB;  at the end {rss1:6.1f} MiB;  peak {peak:6.1f} MiB"
    )
    print(f"  bare python       {base_rss:6.1f} MiB  -> service/baseline {rss1 / base_rss:.1f}x")
    print(
        f"  CPU time          {cpu:6.2f} s = {100 * cpu / elapsed:.3f} % of one core "
        f"(bare python sleeping: {base_cpu:.2f} s)"
    )
    print(f"  exit code after SIGTERM: {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=180.0)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    startup(args.runs)
    idle_run(args.duration)


if __name__ == "__main__":
    main()
