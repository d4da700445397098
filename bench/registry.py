"""Traceability registry at scale: import speed, lookup and scope latency, API memory. One JSON line.

1. ``write_synthetic_units`` writes N realistic units (20 models, batches of 10,000, supplier lots,
   shipments, sales, customers) to Parquet (not timed).
2. ``recallwatch registry import FILE`` loads it into a fresh embedded ClickHouse, timed end to end
   as a user would run it (process start included).
3. ``recallwatch api`` is started on that data; single-serial lookups (``GET /v1/units/{serial}``)
   and scope resolutions of about 1 % of the units (``POST /v1/scopes/resolve``: by model and
   batches, by supplier lot, by line and production dates) go through HTTP, one at a time, with
   every serial and scope distinct so no cache answers twice.
4. Another ``--lookups`` distinct serials are looked up by ``--clients`` threads at once (a consumer
   page during a recall): the rate the API sustains and the latency each caller sees meanwhile
   (``lookup_concurrent_per_s``, ``lookup_concurrent_p50_ms``, ``lookup_concurrent_p99_ms``).
5. The API's resident memory is read from /proc after the load (``api_rss_mb``) with its peak
   (``api_peak_rss_mb``).

    python bench/registry.py [--units 10000000] [--lookups 2000] [--scopes 200] [--clients 8]
                             [--keep DIR [--reuse]]

``--reuse`` skips the import and queries the database an earlier ``--keep DIR`` run left, whose
parts that run's API has (mostly) merged: the steady state, as against the minute after an import.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def free_port() -> int:
    from streams.broker import free_port as fp

    return fp()


def concurrent_lookups(base: str, serials: list[str], clients: int) -> dict[str, Any]:
    """Distinct lookups from ``clients`` threads at once (a consumer page during a recall): the rate
    the API sustains and the latency each caller sees meanwhile."""
    if clients <= 0 or not serials:
        return {}
    shares = [serials[i::clients] for i in range(clients)]
    latencies: list[float] = []

    def client(share: list[str]) -> None:
        with httpx.Client(base_url=base, headers={"X-API-Key": "bench-key"}, timeout=60) as http:
            http.get(f"/v1/units/{share[0]}")  # connect before the clock starts
            barrier.wait()
            for s in share[1:]:
                t = time.perf_counter()
                r = http.get(f"/v1/units/{s}")
                latencies.append((time.perf_counter() - t) * 1000)  # list.append is atomic
                assert r.status_code == 200, r.text

    barrier = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    barrier.wait()
    t = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - t
    return {
        "lookup_clients": clients,
        "lookup_concurrent_per_s": round(len(latencies) / elapsed),
        "lookup_concurrent_p50_ms": round(statistics.median(latencies), 2),
        "lookup_concurrent_p99_ms": round(percentile(latencies, 0.99), 2),
    }


def main() -> None:
    from recallwatch.synthetic_units import write_synthetic_units

    parser = argparse.ArgumentParser()
    parser.add_argument("--units", type=int, default=10_000_000)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--scopes", type=int, default=200)
    parser.add_argument(
        "--clients", type=int, default=8, help="concurrent clients for the lookup throughput phase (0: skip)"
    )
    parser.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --keep: query the database a previous run left there (no import; merges done)",
    )
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="rw-bench-registry-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "units.parquet"
    t = time.perf_counter()
    layout = write_synthetic_units(data, args.units)
    generate_s = time.perf_counter() - t

    env = {k: v for k, v in os.environ.items() if not k.startswith("RW_")}
    env.update(RW_CLICKHOUSE__DATA_DIR=str(work / "clickhouse"), RW_LOG_LEVEL="WARNING")
    cli = [sys.executable, "-m", "recallwatch.cli"]
    if args.reuse:
        if args.keep is None or not (work / "clickhouse").is_dir():
            raise SystemExit("--reuse needs --keep DIR with a database from an earlier run")
        report, import_wall_s = {"seconds": None}, None
    else:
        t = time.perf_counter()
        out = subprocess.run(
            [*cli, "registry", "import", str(data), "--json", "--quiet"],
            env=env, cwd=work, capture_output=True, text=True, check=True,
        )  # fmt: skip
        import_wall_s = time.perf_counter() - t
        report = json.loads(out.stdout.strip().splitlines()[-1])
        assert report["loaded"] == args.units, report

    port = free_port()
    env.update(
        RW_API__PORT=str(port),
        RW_API__KEYS=json.dumps({"bench-key": "operations"}),
        RW_API__ANONYMOUS_ROLE="",
    )
    api = subprocess.Popen(
        [*cli, "api"], env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, headers={"X-API-Key": "bench-key"}, timeout=60) as http:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or api.poll() is not None:
                    raise SystemExit("the API did not come up")
                time.sleep(0.2)
            serials = layout.sample_serials(2 * args.lookups + 50, seed=11)
            for s in serials[:50]:  # warm-up: first queries load marks and primary keys
                http.get(f"/v1/units/{s}")
            lookup_ms = []
            for s in serials[50 : 50 + args.lookups]:
                t = time.perf_counter()
                r = http.get(f"/v1/units/{s}")
                lookup_ms.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, r.text
            scopes = layout.scopes_of_one_percent(args.scopes + 10, seed=12)
            scope_ms, scope_units = [], []
            for i, scope in enumerate(scopes):
                t = time.perf_counter()
                r = http.post("/v1/scopes/resolve", json=scope)
                elapsed = (time.perf_counter() - t) * 1000
                assert r.status_code == 200, r.text
                if i >= 10:  # the first ten warm up
                    scope_ms.append(elapsed)
                    scope_units.append(r.json()["units"])
            concurrent = concurrent_lookups(base, serials[50 + args.lookups :], args.clients)
            rss, peak = rss_mb(api.pid)
    finally:
        api.terminate()
        api.wait(timeout=30)

    print(
        json.dumps(
            {
                "units": args.units,
                "import_units_per_s": round(args.units / report["seconds"]) if report["seconds"] else None,
                "import_wall_units_per_s": round(args.units / import_wall_s) if import_wall_s else None,
                "import_s": report["seconds"],
                "reused": args.reuse,
                "lookup_p50_ms": round(statistics.median(lookup_ms), 2),
                "lookup_p99_ms": round(percentile(lookup_ms, 0.99), 2),
                "scope_p50_ms": round(statistics.median(scope_ms), 2),
                "scope_p99_ms": round(percentile(scope_ms, 0.99), 2),
                "scope_units_median": int(statistics.median(scope_units)),
                **concurrent,
                "api_rss_mb": round(rss, 1),
                "api_peak_rss_mb": round(peak, 1),
                "generate_s": round(generate_s, 1),
                "lookups": len(lookup_ms),
                "scopes": len(scope_ms),
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
