"""Polling by activity: 10,000 finished records + 5 running operations, old way vs new way.

A local HTTP server (127.0.0.1, not respx) plays the record API: ``operation_status`` and
``operation_id`` select records as the API does. Every record is "realistic": 5 steps of 4
sub-steps, about 5.2 KB of JSON, so the complete listing is about 52 MB. Measured in one run,
side by side:

1. CPU of one cycle in process: a complete listing of unchanged records (``poll --full``'s
   work), an incremental cycle, against ``json.loads`` of the same body; and the CPU of the
   whole ``bcs-notifier poll --full`` process against ``python -c`` httpx + ``json.loads``.
2. ``bcs-notifier run`` at ``active_poll_interval = 1`` for each ``poll_mode`` (and, with
   ``--old PATH``, for a checkout of an older version, e.g. ``git worktree add /tmp/old
   <commit>``): the running operations move at random instants, a local webhook receiver
   notes when each event arrives. Printed: API requests and bytes per hour (against
   full-list polling at the active interval: 3600 complete listings an hour), median and
   max detection latency (API change -> webhook received), peak RSS of ``run``.

Run: ``python benchmarks/bench_activity.py [--records N] [--changes N] [--old PATH]``.
The machine may be busy: ratios are against baselines measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

PROJECT = "0123456789abcdef0123456789abcdef"
TOKEN = "bench-token"  # noqa: S105 - the local server takes any token
NS = 1_000_000_000
STEPS = ("Preparation", "Create Resources", "Deploy Nodes", "Configure Channel", "Finish")


def sub_step(step: int, index: int, status: str, at_ns: int) -> tuple[str, dict[str, Any]]:
    name = f"{STEPS[step]} {index + 1}"
    done = status == "finished"
    return name, {
        "substep_name": name,
        "detail": "" if done else None,
        "status": status,
        "message": [f"task {index + 1}: {'done' if done else 'running'} on node-{step}{index}"],
        "start_time": at_ns - 50 * NS,
        "end_time": at_ns if done else 0,
        "serial_num": step * 4 + index + 1,
    }


def make_record(number: int, status: str, at_ns: int, done_substeps: int = 20) -> dict[str, Any]:
    """A record of 5 steps x 4 sub-steps; the first ``done_substeps`` finished."""
    process = {}
    for step in range(5):
        subs = dict(
            sub_step(
                step,
                index,
                "finished" if step * 4 + index < done_substeps else "processing",
                at_ns,
            )
            for index in range(4)
        )
        step_done = all(sub["status"] == "finished" for sub in subs.values())
        process[STEPS[step]] = {
            "step_name": STEPS[step],
            "status": "finished" if step_done else "processing",
            "detail": "",
            "sub_steps": subs,
            "serial_num": step + 1,
        }
    operation_id = f"BCSSVC01-99-{1_700_000_000_000_000_000 + number}"
    return {
        "operation_id": operation_id,
        "resource_type": "BCSSVC01",
        "operation_type": "99",
        "domain_id": "051ddda36880d3420f9bc01403fd8da0",
        "project_id": PROJECT,
        "blockchain_id": f"23604f57-eac9-3777-e9f5-{number:012d}",
        "blockchain_name": f"bcs-chain-{number}",
        "cluster_info": {
            "cluster_type": "cce",
            "name": f"cluster-{number}",
            "cluster_id": f"4df5652f-96dc-11eb-b49c-{number:012d}",
            "node_infos": None,
        },
        "operation_process": process,
        "record_time": at_ns,
        "operation_status": status,
        "message": None,
        "desc": "create a blockchain with 2 organisations and 4 peers each",
    }


# -- the API --------------------------------------------------------------------------------


@dataclass
class Api:
    """10,000 finished records (encoded once) and the recent ones (encoded per request):
    the running operations and those that finished during the run."""

    finished_blob: bytes
    finished_count: int
    active: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: int = 0
    bytes_sent: int = 0
    complete_listings: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def body(self, query: dict[str, str]) -> bytes:
        with self.lock:
            active = [dict(raw) for raw in self.active.values()]
        if not query:
            tail = b",".join(json.dumps(raw).encode() for raw in active)
            return b"".join(
                [
                    b'{"count":%d,"operation_records":[' % (self.finished_count + len(active)),
                    self.finished_blob,
                    b"," if tail else b"",
                    tail,
                    b"]}",
                ]
            )
        if "operation_id" in query:
            wanted = [raw for raw in active if raw["operation_id"] == query["operation_id"]]
        elif query.get("operation_status") == "finished":
            raise ValueError("not served: the finished list is the whole history")
        else:
            wanted = [raw for raw in active if raw["operation_status"] == query["operation_status"]]
        return json.dumps({"count": len(wanted), "operation_records": wanted}).encode()

    def counters(self) -> tuple[int, int]:
        with self.lock:
            return self.requests, self.bytes_sent


def serve_api(api: Api) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = dict(parse_qsl(parts.query))
            body = api.body(query)
            with api.lock:
                api.requests += 1
                api.bytes_sent += len(body)
                api.complete_listings += not query
            self.send_response(200)
            self.send_header("Content-Type", "application/json;charset=UTF-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            view = memoryview(body)
            for start in range(0, len(body), 1 << 20):
                self.wfile.write(view[start : start + (1 << 20)])

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Receiver:
    arrivals: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def events(self) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return list(self.arrivals)


def serve_receiver(receiver: Receiver) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            document = json.loads(self.rfile.read(length))
            with receiver.lock:
                receiver.arrivals.append((time.time(), document))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# -- helpers --------------------------------------------------------------------------------


def config_text(api_port: int, hook_port: int | None, database: Path, mode: str) -> str:
    channel = (
        f'\n[[channels]]\nname = "hook"\nurls = ["webhook://127.0.0.1:{hook_port}/hook"]\n'
        if hook_port
        else ""
    )
    mode_line = f'poll_mode = "{mode}"\n' if mode != "old" else ""
    return (
        f'[service]\ndatabase = "sqlite:///{database}"\npoll_interval = 60\n'
        f"active_poll_interval = 1\npoll_jitter = 0\n{mode_line}\n"
        f'[[sources]]\nname = "bench"\nendpoint = "http://127.0.0.1:{api_port}"\n'
        f'project_id = "{PROJECT}"\ntimeout = 60\n'
        + ("max_response_bytes = 268435456\n" if mode == "old" else "")
        + f'[sources.auth]\ntype = "token"\ntoken = "{TOKEN}"\n'
        + channel
    )


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cpu(command: list[str], env: dict[str, str]) -> float:
    """CPU seconds of one child process (the best of three)."""
    best = float("inf")
    for _ in range(3):
        before = child_cpu()
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
        best = min(best, child_cpu() - before)
    return best


def best_cpu(runs: int, action: Any) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.process_time()
        action()
        best = min(best, time.process_time() - started)
    return best


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def env_for(tree: Path | None) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def service_command(tree: Path | None, *args: str) -> list[str]:
    """``python -m notifier ARGS``, from ``tree`` (a checkout: its ``notifier`` package and
    its top-level ``migrations``) instead of the installed version when given."""
    if tree is None:
        return [sys.executable, "-m", "notifier", *args]
    bootstrap = (
        "import runpy, sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]\n"
        f"sys.path.insert(0, {str(tree)!r})\n"
        "import notifier\n"
        f"notifier.__path__.append({str(tree)!r})  # notifier.migrations = the checkout's\n"
        f"sys.argv = ['bcs-notifier', *{list(args)!r}]\n"
        "runpy.run_module('notifier', run_name='__main__', alter_sys=True)\n"
    )
    return [sys.executable, "-c", bootstrap]


# -- 1: CPU per cycle ------------------------------------------------------------------------


def measure_cpu(api: Api, port: int, scratch: Path, old: Path | None) -> None:
    import httpx

    from notifier.config import parse_config
    from notifier.pipeline import Poller
    from notifier.store import db

    url = f"http://127.0.0.1:{port}/v2/{PROJECT}/operation/record"
    body = httpx.get(url, timeout=120).content
    print(
        f"complete listing: {api.finished_count + len(api.active)} records, "
        f"{len(body) / 1e6:.1f} MB"
    )
    loads = best_cpu(3, lambda: json.loads(body))
    database = scratch / "cpu.db"
    config = parse_config(config_text(port, None, database, "incremental"))
    engine = db.make_engine(f"sqlite:///{database}")
    db.upgrade(engine, backup=False)
    with Poller(config, engine) as poller:
        source = config.sources[0]
        assert poller.poll_source(source).ok  # the baseline
        full = best_cpu(3, lambda: poller.poll_source(source, full=True))
        short = best_cpu(3, lambda: poller.poll_source(source))
    engine.dispose()
    print("\nCPU per cycle, in process (best of 3)")
    print(f"  json.loads of the body (baseline)           {loads * 1000:8.1f} ms")
    print(
        f"  complete listing, 10,000 unchanged records  {full * 1000:8.1f} ms"
        f"  = {full / loads:4.2f} x json.loads"
    )
    print(
        f"  incremental cycle (status lists)            {short * 1000:8.1f} ms"
        f"  = {short / loads:6.4f} x json.loads"
    )

    path = scratch / "poll.toml"
    path.write_text(config_text(port, None, database, "incremental"))
    exe = [sys.executable, "-m", "notifier", "--config", str(path), "poll"]
    reference = run_cpu(
        [
            sys.executable,
            "-c",
            f"import httpx, json; json.loads(httpx.get({url!r}, timeout=120).content)",
        ],
        env_for(None),
    )
    whole = run_cpu([*exe, "--full"], env_for(None))
    idle = run_cpu(exe, env_for(None))
    print("\nCPU of a whole process (best of 3)")
    print(f"  python -c httpx.get + json.loads (baseline) {reference:8.2f} s")
    print(
        f"  bcs-notifier poll --full (unchanged)        {whole:8.2f} s"
        f"  = {whole / reference:4.2f} x"
    )
    print(
        f"  bcs-notifier poll (incremental)             {idle:8.2f} s  = {idle / reference:4.2f} x"
    )
    if old is not None:  # the old version's unchanged re-poll, on its own database
        path = scratch / "old-poll.toml"
        path.write_text(config_text(port, None, scratch / "old-poll.db", "old"))
        command = service_command(old, "--config", str(path), "poll")
        subprocess.run(command, check=True, capture_output=True, timeout=600)  # baseline
        before = run_cpu(command, env_for(None))
        print(
            f"  old version: bcs-notifier poll (unchanged)  {before:8.2f} s"
            f"  = {before / reference:4.2f} x"
        )


# -- 2: the service --------------------------------------------------------------------------


@dataclass
class RunResult:
    label: str
    requests_per_hour: float
    bytes_per_hour: float
    latencies: list[float]
    missed: int
    peak_rss: float
    #: peak RSS of a second `run` on the same database (10,000 records already stored)
    restart_rss: float = float("nan")


def move(api: Api, rng: random.Random, next_number: Iterator[int]) -> tuple[str, int]:
    """One running operation moves: its next sub-step finishes (then the operation, replaced
    by a new one). Returns (operation id, record_time ns) of the change."""
    with api.lock:
        running = [key for key, raw in api.active.items() if raw["operation_status"] != "finished"]
        operation_id = rng.choice(sorted(running))
        raw = api.active[operation_id]
        done = sum(
            sub["status"] == "finished"
            for step in raw["operation_process"].values()
            for sub in step["sub_steps"].values()
        )
        now_ns = time.time_ns()
        number = int(operation_id.rsplit("-", 1)[1]) - 1_700_000_000_000_000_000
        if done + 1 >= 20:
            api.active[operation_id] = make_record(number, "finished", now_ns, 20)
        else:
            api.active[operation_id] = make_record(number, "processing", now_ns, done + 1)
    if done + 1 >= 20:  # finished (it stays listed), and a new one starts
        with api.lock:
            new = next(next_number)
            api.active[f"BCSSVC01-99-{1_700_000_000_000_000_000 + new}"] = make_record(
                new, "processing", time.time_ns(), 2
            )
    return operation_id, now_ns


def run_service(
    label: str, mode: str, api: Api, api_port: int, changes: int, scratch: Path, tree: Path | None
) -> RunResult:
    receiver = Receiver()
    hook = serve_receiver(receiver)
    directory = scratch / mode
    directory.mkdir()
    path = directory / "notifier.toml"
    path.write_text(config_text(api_port, hook.server_address[1], directory / "state.db", mode))
    log = (directory / "run.log").open("w")
    process = subprocess.Popen(
        service_command(tree, "--config", str(path), "run"),
        stdout=subprocess.DEVNULL,
        stderr=log,
        env=env_for(tree),
    )
    rng = random.Random(7)
    numbers = iter(range(50_000, 60_000))
    latencies: list[float] = []
    missed = 0
    try:
        deadline = time.monotonic() + 600
        start_requests = api.counters()[0]
        while api.counters()[0] < start_requests + 2:  # the baseline, and one cycle after it
            if time.monotonic() > deadline or process.poll() is not None:
                log.flush()
                text = (directory / "run.log").read_text()[-2000:]
                raise RuntimeError(f"{label}: the service did not start:\n{text}")
            time.sleep(0.2)
        requests0, bytes0 = api.counters()
        started = time.monotonic()
        for _ in range(changes):
            time.sleep(rng.uniform(1.5, 3.5))
            operation_id, record_time = move(api, rng, numbers)
            wait_until = time.monotonic() + 60
            arrived = None
            while time.monotonic() < wait_until and arrived is None:
                for when, document in receiver.events():
                    data = document.get("data", {})
                    if (
                        document.get("subject") == operation_id
                        and data.get("operation", {}).get("record_time") == record_time
                    ):
                        arrived = when
                        break
                time.sleep(0.02)
            if arrived is None:
                missed += 1
            else:
                latencies.append(arrived - record_time / NS)
        elapsed = time.monotonic() - started
        requests1, bytes1 = api.counters()
        rss = peak_rss_mb(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        hook.shutdown()
        hook.server_close()
        log.close()
    per_hour = 3600 / elapsed
    restart = restart_rss(api, path, directory, tree)
    return RunResult(
        label,
        (requests1 - requests0) * per_hour,
        (bytes1 - bytes0) * per_hour,
        latencies,
        missed,
        rss,
        restart,
    )


def restart_rss(api: Api, path: Path, directory: Path, tree: Path | None) -> float:
    """Peak RSS of `run` started again on the stored records: its reconciling complete
    listing and ten more cycles (the channel's receiver is gone: deliveries just fail)."""
    with (directory / "restart.log").open("w") as log:
        process = subprocess.Popen(
            service_command(tree, "--config", str(path), "run"),
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env_for(tree),
        )
        try:
            start = api.counters()[0]
            deadline = time.monotonic() + 300
            while api.counters()[0] < start + 12 and time.monotonic() < deadline:
                time.sleep(0.2)
            return peak_rss_mb(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=12)
    parser.add_argument("--old", type=Path, help="a checkout of an older version to compare")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-run", action="store_true", help="only the CPU measurements")
    args = parser.parse_args()

    origin = time.time_ns() - 86_400 * NS
    finished = [make_record(n, "finished", origin + n * NS) for n in range(args.records)]
    blob = b",".join(json.dumps(raw).encode() for raw in finished)
    api = Api(blob, len(finished))
    del finished
    for n in range(args.records, args.records + 5):
        api.active[f"BCSSVC01-99-{1_700_000_000_000_000_000 + n}"] = make_record(
            n, "processing", time.time_ns(), 3
        )
    server = serve_api(api)
    port = server.server_address[1]
    full_body = len(api.body({}))
    print(
        f"records: {args.records} finished + 5 running; a complete listing is "
        f"{full_body / 1e6:.1f} MB ({full_body / (args.records + 5):.0f} bytes a record)"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="bench-activity-") as scratch_name:
            scratch = Path(scratch_name)
            if not args.skip_cpu:
                measure_cpu(api, port, scratch, args.old)
            runs = []
            if args.skip_run:
                return
            if args.old is not None:
                runs.append(("old version", "old", args.old))
            runs += [
                ("poll_mode=full", "full", None),
                ("poll_mode=incremental", "incremental", None),
            ]
            results = [
                run_service(label, mode, api, port, args.changes, scratch, tree)
                for label, mode, tree in runs
            ]
    finally:
        server.shutdown()
        server.server_close()

    reference = 3600 * full_body  # full-list polling at the active interval: 1 listing a second
    print(f"\n`run` at active_poll_interval = 1, {args.changes} changes each")
    print(
        f"  full-list polling at the active interval: 3600 requests/h, {reference / 1e9:.1f} GB/h"
    )
    header = f"  {'':24s} {'requests/h':>11s} {'GB/h':>8s} {'% of full-list':>14s} "
    print(
        header + f"{'median s':>9s} {'max s':>7s} {'missed':>6s} {'peak RSS MB':>12s} "
        f"{'restarted':>9s}"
    )
    for result in results:
        median = statistics.median(result.latencies) if result.latencies else float("nan")
        worst = max(result.latencies) if result.latencies else float("nan")
        print(
            f"  {result.label:24s} {result.requests_per_hour:11.0f} "
            f"{result.bytes_per_hour / 1e9:8.3f} {100 * result.bytes_per_hour / reference:13.2f}% "
            f"{median:9.2f} {worst:7.2f} {result.missed:6d} {result.peak_rss:12.0f} "
            f"{result.restart_rss:9.0f}"
        )
    print("  peak RSS: the first `run` stores the baseline; restarted: a second `run` on them")
    print(
        "  (incremental: a complete listing every 900 s adds "
        f"{4 * full_body / 1e9:.2f} GB/h = {400 * full_body / reference:.2f}% "
        "beyond this short run)"
    )


if __name__ == "__main__":
    main()
