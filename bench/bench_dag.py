"""Benchmark: the whole DAG with ``dag.test()``, CPU per record across every task and memory per task.

Runs every task of the DAG (plan_partition, extract, filter_by_age, transform, plan_shards, dedupe_check,
send, report, release_partition) on a synthetic partition in ONE process with ``dag.test()``, against a
moto S3 server and the Events API emulator (no rate limit), each started in its OWN subprocess, so their
CPU is not counted. The partition comes from ``tools/synthetic_users.py`` (users who upload several
batches a day, as mParticle's SDKs do, so coalescing has something to merge), ``--per-object`` records an
object (half of them gzip) under the partition's date folder; the run's settings are ``files_per_chunk``
(several chunks) and, on trees that have them, the defaults ``coalesce = true`` and one shard per chunk.

What it measures, in the process that runs ``dag.test()``:

- **CPU per record**: the process's CPU time (``getrusage(RUSAGE_SELF)``, user + sys, every thread: the
  send task's client workers included) during ``dag.test()``, divided by the records the report says were
  read. That includes Airflow's own work: the DAG's serialisation and bundle sync at the start of
  ``dag.test()`` (the DAG file parsed again), creating the run, the in-process Execution API every task
  talks to, XComs, the task logs, and the scheduling loop between tasks. It is split into setup (before
  the first task starts), each task's body (from ``on_task_instance_running`` to
  ``on_task_instance_success``: execute, with the S3 reads and writes on the client side) and the rest
  (Airflow between tasks). The DAG file's first parse (DagBag, before ``dag.test()``) is printed apart.
  The probe's own work (a ``gc.collect()`` + ``malloc_trim`` before each task, the RSS sampler thread) is
  measured and left out.
- **Memory per task**: a background thread samples VmRSS (``/proc/self/status``) every ``--sample-ms``
  and attributes each sample to the task instance running (an Airflow listener registered with
  ``airflow.sdk.listener.get_listener_manager().add_listener``: the Task SDK's task runner calls its
  ``on_task_instance_running`` / ``_success`` / ``_failed`` hooks in the ``dag.test()`` process). At each
  task's start the probe collects garbage, returns free heap to the OS (``malloc_trim``, as a fresh
  worker process would start without the previous task's heap) and resets the kernel's peak-RSS mark
  (``/proc/self/clear_refs`` 5); at its end the task's peak is the larger of the sampled maximum and
  VmHWM, so a spike between samples is not missed. Per task: peak RSS while it ran, and its growth over
  the RSS at its start (what the task itself needs on top of the interpreter, Airflow and its imports).

``--compare OLD_ROOT`` measures this tree and then another checkout (e.g. ``git worktree add /tmp/old
2e96703``: before sharding, coalescing and msgpack stage files) on the same partition, one after the
other, and prints both side by side. Each tree runs in a fresh subprocess with
``PYTHONPATH=<root>/include:<root>`` and ``cwd=<root>`` (ahead of the editable install), its own Airflow
home (SQLite), its own moto and emulator; the subprocess prints where ``mparticle_backfill`` was imported
from, and the driver checks it is that tree. Only settings both trees know are passed (``--setting
NAME=JSON`` adds one, to every tree measured). The emulator counts what it accepts but keeps no batch.

Output: one table (a column per tree): records, batches sent, wall time, CPU per record (all, setup,
task bodies, Airflow between tasks; per task), peak RSS and growth per task (the largest mapped
instance), and the CPU of moto and the emulator (not counted). ``--json`` keeps every task instance's
figures, ``--show FILE`` prints the table again. The partition is cached under ``bench/out/``, the
Airflow logs of each run go to ``bench/out/dag-logs/``. On this project's 2-core machines a tree takes
~3-4 minutes at 200,000 records and ~15-18 minutes at 1,000,000 (the 1M partition takes ~1.5 minutes to
generate, 1.2 GB).

    .venv/bin/python bench/bench_dag.py                                     # this tree, 200,000 records
    .venv/bin/python bench/bench_dag.py --compare /tmp/old                  # this tree, then /tmp/old
    .venv/bin/python bench/bench_dag.py --root /tmp/old --records 20000     # another tree alone
    .venv/bin/python bench/bench_dag.py --records 1000000 --json bench/out/dag-1m.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DAY = "2025-11-20"
DAY_MS = 1_763_596_800_000  # 2025-11-20T00:00:00Z
REFERENCE_TIME = "2025-11-21T06:00:00Z"  # every synthetic event is inside the 14-day window
BUCKET, PREFIX = "bench-quarantine", "mparticle/quarantine"
POOL = "mparticle_events_api"
DAG_ID = "mparticle_quarantine_backfill"
API_KEY, API_SECRET = "bench-key", "bench-secret"
TASK_ORDER = (
    "plan_partition",
    "extract",
    "filter_by_age",
    "transform",
    "plan_shards",
    "dedupe_check",
    "send",
    "report",
    "release_partition",
)


# --- The partition (generated once per size, by this tree's tools) -------------------------------------


def generate(folder: Path, records: int, per_object: int, seed: int) -> list[Path]:
    """Objects of ``per_object`` records of ``tools/synthetic_users.py``, every other one gzip; cached."""
    marker = folder / "done"
    if marker.exists():
        return sorted(folder.glob("*.txt"))
    sys.path.insert(0, str(ROOT))
    from tools import synthetic
    from tools.synthetic_users import partition_lines

    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.txt"):
        stale.unlink()
    lines: list[bytes] = []
    index = 0

    def flush() -> None:
        nonlocal index
        name = synthetic.object_key("", date.fromisoformat(DAY), index, second=index).rsplit("/", 1)[-1]
        (folder / name).write_bytes(synthetic.object_body(lines, compress=index % 2 == 0))
        lines.clear()
        index += 1

    for line in partition_lines(random.Random(seed), DAY_MS, records):
        lines.append(line)
        if len(lines) == per_object:
            flush()
    if lines:
        flush()
    marker.write_text(f"{records} records, {per_object} per object, seed {seed}\n")
    return sorted(folder.glob("*.txt"))


# --- The servers, each in its own process -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {seconds:.0f} s")


def serve_emulator(port: int) -> None:
    """The emulator without a rate limit, in this process until SIGTERM; it counts batches but keeps none
    (a million accepted batches would otherwise be held as dicts in its memory)."""
    sys.path.insert(0, str(ROOT))
    from tools.emulator import EventsApiEmulator

    class Discard(list):
        def append(self, item: Any) -> None:
            pass

    emulator = EventsApiEmulator(API_KEY, API_SECRET, port=port)
    emulator.state.batches = Discard()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    emulator.start()
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    emulator.stop()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of another process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- The measured process: dag.test() with a listener and an RSS sampler ------------------------------


def rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Probe:
    """Listener hooks (Task SDK) and an RSS sampler: per task instance, CPU, RSS at start, peak RSS."""

    def __init__(self, sample_s: float, trim: bool) -> None:
        import ctypes
        import gc

        self.sample_s = sample_s
        self.trim = trim
        self.gc = gc
        self.malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim if trim else None
        self.current: dict[str, Any] | None = None
        self.instances: list[dict[str, Any]] = []
        self.between_peak_kb = 0  # samples taken while no task ran
        self.probe_cpu = 0.0  # gc + malloc_trim at task starts: not the DAG's work
        self.probe_wall = 0.0
        self.sampler_cpu = 0.0
        self.first_task_cpu: float | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        while not self.stop.wait(self.sample_s):
            rss = rss_kb()
            current = self.current
            if current is None:
                self.between_peak_kb = max(self.between_peak_kb, rss)
            else:
                current["sampled_peak_kb"] = max(current["sampled_peak_kb"], rss)
                current["samples"] += 1
        self.sampler_cpu = time.thread_time()

    def settle(self) -> None:
        """Free what the previous work left, as a fresh worker process would start without it."""
        started, wall_started = cpu_now(), time.perf_counter()
        if self.trim:
            self.gc.collect()
            self.malloc_trim(0)
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        self.probe_cpu += cpu_now() - started
        self.probe_wall += time.perf_counter() - wall_started

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()

    # Hook names and parameter names are those of airflow.sdk._shared.listeners.spec.taskinstance.
    def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
        self.settle()
        rss = rss_kb()
        cpu = cpu_now()
        if self.first_task_cpu is None:
            self.first_task_cpu = cpu - self.probe_cpu
        self.current = {
            "task_id": task_instance.task_id,
            "map_index": getattr(task_instance, "map_index", -1),
            "start_rss_kb": rss,
            "sampled_peak_kb": rss,
            "samples": 0,
            "cpu_start": cpu,
            "wall_start": time.perf_counter(),
        }

    def _end(self, task_instance: Any, state: str) -> None:
        current, self.current = self.current, None
        if current is None or current["task_id"] != task_instance.task_id:
            return
        current.update(
            state=state,
            cpu=cpu_now() - current.pop("cpu_start"),
            wall=time.perf_counter() - current.pop("wall_start"),
            hwm_kb=rss_kb("VmHWM"),
            end_rss_kb=rss_kb(),
        )
        current["peak_kb"] = max(current["sampled_peak_kb"], current["hwm_kb"])
        current["growth_kb"] = current["peak_kb"] - current["start_rss_kb"]
        self.instances.append(current)

    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
        self._end(task_instance, "success")

    def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: Any) -> None:
        self._end(task_instance, "failed")


def child(args: argparse.Namespace) -> None:
    """Runs in the subprocess whose CPU is measured (cwd and PYTHONPATH: the tree under test)."""
    import mparticle_backfill
    import mparticle_backfill_airflow

    modules = {
        "mparticle_backfill": mparticle_backfill.__file__,
        "airflow_package": mparticle_backfill_airflow.__file__,
    }
    print(f"mparticle_backfill imported from {modules['mparticle_backfill']}", flush=True)

    from datetime import datetime, timezone

    from airflow.listeners import hookimpl
    from airflow.sdk.listener import get_listener_manager

    for name in ("on_task_instance_running", "on_task_instance_success", "on_task_instance_failed"):
        hookimpl(getattr(Probe, name))  # marks the function; pluggy finds it on the instance
    probe = Probe(args.sample_ms / 1000, trim=not args.no_trim)
    get_listener_manager().add_listener(probe)  # also loads the plugins folder's plugins, before the clock

    parse_started = cpu_now()
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(Path.cwd() / "dags")).dags[DAG_ID]
    parse_cpu = cpu_now() - parse_started

    probe.settle()
    baseline_kb = rss_kb()
    probe.probe_cpu = probe.probe_wall = 0.0
    probe.start()
    conf = {"partition_date": DAY, "reference_time": REFERENCE_TIME, "files_per_chunk": args.files_per_chunk}
    conf.update(json.loads(args.settings))
    wall_started = time.perf_counter()
    cpu_started = cpu_now()
    run = dag.test(logical_date=datetime.fromisoformat(DAY).replace(tzinfo=timezone.utc), run_conf=conf)
    cpu_total = cpu_now() - cpu_started
    wall = time.perf_counter() - wall_started
    probe.finish()
    result = {
        "modules": modules,
        "state": str(run.state),
        "run_id": run.run_id,
        "conf": conf,
        "parse_cpu": parse_cpu,
        "baseline_rss_kb": baseline_kb,
        "cpu_total_raw": cpu_total,
        "probe_cpu": probe.probe_cpu,
        "sampler_cpu": probe.sampler_cpu,
        "cpu_total": cpu_total - probe.probe_cpu - probe.sampler_cpu,
        "cpu_setup": (probe.first_task_cpu or cpu_started) - cpu_started,
        "wall": wall - probe.probe_wall,
        "probe_wall": probe.probe_wall,
        "between_peak_kb": probe.between_peak_kb,
        "instances": probe.instances,
    }
    Path(args.result).write_text(json.dumps(result, indent=1))
    print(f"dag.test: {run.state} in {wall:.1f} s, {cpu_total:.1f} s CPU", flush=True)


# --- The driver: servers, Airflow home, data, the measured subprocess, the report ---------------------


def airflow_env(root: Path, home: Path, s3_url: str, api_port: int, args: argparse.Namespace) -> dict[str, str]:
    extra = {"batches_per_second": args.batches_per_second, "max_workers": args.max_workers}
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root / "include"), str(root)]),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://127.0.0.1:28793/execution/",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "NO_PROXY": "127.0.0.1,localhost",
        "AIRFLOW_CONN_MPARTICLE_QUARANTINE_S3": json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": s3_url, "region_name": "us-east-1"},
            }
        ),
        "AIRFLOW_CONN_MPARTICLE_EVENTS_API": json.dumps(
            {
                "conn_type": "http",
                "host": "127.0.0.1",
                "schema": "http",
                "port": api_port,
                "login": API_KEY,
                "password": API_SECRET,
                "extra": extra,
            }
        ),
        "AIRFLOW_VAR_MPARTICLE_BACKFILL": json.dumps({"bucket": BUCKET, "prefix": PREFIX}),
    }


def git_state(root: Path) -> str:
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "include", "dags"], capture_output=True, text=True
    )
    return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def measure(root: Path, paths: list[Path], args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """One tree: fresh servers, Airflow home and bucket; dag.test in a subprocess; its result and the report."""
    import boto3

    root = root.resolve()
    label = root.name
    work = Path(tempfile.mkdtemp(prefix=f"bench-dag-{label}-"))
    log_path = logs / f"{label}-{args.records}.log"
    log = log_path.open("w")
    s3_port, api_port = free_port(), free_port()
    s3_url = f"http://127.0.0.1:{s3_port}"
    servers = [
        subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-emulator", str(api_port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        wait_for(f"{s3_url}/", servers[0])
        wait_for(f"http://127.0.0.1:{api_port}/_emulator/stats", servers[1])
        env = airflow_env(root, work / "airflow", s3_url, api_port, args)
        for command in (["db", "migrate"], ["pools", "set", POOL, "2", "Events API senders"]):
            subprocess.run(
                [sys.executable, "-m", "airflow", *command], env=env, cwd=root, check=True, stdout=log, stderr=log
            )
        s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
        s3.create_bucket(Bucket=BUCKET)
        for path in paths:
            s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{DAY}/{path.name}", Body=path.read_bytes())
        commit = git_state(root)  # what the measured process imports (read as it starts)
        cpu_before = [process_cpu_seconds(server.pid) for server in servers]
        result_path = work / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", "--result", str(result_path)]
        command += ["--files-per-chunk", str(args.files_per_chunk), "--sample-ms", str(args.sample_ms)]
        command += ["--no-trim"] if args.no_trim else []
        command += ["--settings", json.dumps(dict(args.setting))]
        print(f"[{label}] dag.test on {len(paths)} objects; log: {log_path}", flush=True)
        done = subprocess.run(command, env=env, cwd=root, stdout=log, stderr=log)
        if done.returncode or not result_path.exists():
            raise RuntimeError(f"the measured run of {root} failed ({done.returncode}): see {log_path}")
        result = json.loads(result_path.read_text())
        result["servers_cpu"] = {
            name: process_cpu_seconds(server.pid) - before
            for name, server, before in zip(("moto", "emulator"), servers, cpu_before, strict=True)
        }
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/_emulator/stats") as answer:
            result["emulator"] = json.load(answer)
        reports = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/_backfill/{DAY}/reports/").get("Contents", [])
        (key,) = [item["Key"] for item in reports if item["Key"].endswith(".json")]
        report = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        result["report"] = {
            "records_read": report["summary"]["records_read"],
            "reconciled": report["reconciled"],
            "totals": report["totals"],
            "coalescing": report.get("coalescing"),
        }
        result["root"] = str(root)
        result["commit"] = commit
        result["log"] = str(log_path)
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        log.close()
        shutil.rmtree(work, ignore_errors=True)  # the Airflow home (SQLite) of this run
    imported = Path(result["modules"]["mparticle_backfill"]).resolve()
    if not imported.is_relative_to(root):
        raise RuntimeError(f"{root} was to be measured, but mparticle_backfill came from {imported}")
    return result


# --- Tables -------------------------------------------------------------------------------------------


def per_task(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    tasks: dict[str, dict[str, Any]] = {}
    for instance in result["instances"]:
        task = tasks.setdefault(
            instance["task_id"], {"instances": 0, "cpu": 0.0, "wall": 0.0, "peak_kb": 0, "growth_kb": 0, "start_kb": 0}
        )
        task["instances"] += 1
        task["cpu"] += instance["cpu"]
        task["wall"] += instance["wall"]
        if instance["peak_kb"] > task["peak_kb"]:
            task["peak_kb"], task["start_kb"] = instance["peak_kb"], instance["start_rss_kb"]
        task["growth_kb"] = max(task["growth_kb"], instance["growth_kb"])
    return tasks


def summary_rows(result: dict[str, Any]) -> dict[str, str]:
    records = result["report"]["records_read"]
    us = 1e6 / max(records, 1)
    tasks = per_task(result)
    body = sum(task["cpu"] for task in tasks.values())
    largest = max(tasks.items(), key=lambda item: item[1]["peak_kb"])
    growing = max(tasks.items(), key=lambda item: item[1]["growth_kb"])
    emulator = result["emulator"]
    coalescing = result["report"].get("coalescing") or {}
    rows = {
        "code": str(Path(result["modules"]["mparticle_backfill"]).parents[2]),
        "commit": result.get("commit", "?"),
        "run state": result["state"],
        "records read": f"{records:,}",
        "replayed": f"{result['report']['totals'].get('replayed', 0):,}",
        "reconciled": str(result["report"]["reconciled"]),
        "batches sent (accepted by the emulator)": f"{emulator.get('batches_accepted', 0):,}",
        "batches per replayed record": f"{emulator.get('batches_accepted', 0) / max(result['report']['totals'].get('replayed', 0), 1):.3f}",
        "requests": f"{emulator.get('requests', 0):,}",
        "answers other than 202": f"{sum(v for k, v in emulator.items() if k.startswith('status_') and k != 'status_202')}",
        "replay batches before coalescing": f"{coalescing['replay_batches']:,}" if coalescing else "-",
        "task instances": f"{len(result['instances'])}",
        "load (1 min) before / after": " / ".join(f"{load[0]:.2f}" for load in result.get("load", {}).values()),
        "wall time of dag.test (probe left out)": f"{result['wall']:.1f} s",
        "CPU, all of dag.test": f"{result['cpu_total']:.1f} s = {result['cpu_total'] * us:.0f} us/record",
        "  setup before the first task": f"{result['cpu_setup']:.1f} s = {result['cpu_setup'] * us:.1f} us/record",
        "  task bodies (running -> success)": f"{body:.1f} s = {body * us:.0f} us/record",
        "  Airflow between tasks": f"{result['cpu_total'] - result['cpu_setup'] - body:.1f} s = {(result['cpu_total'] - result['cpu_setup'] - body) * us:.1f} us/record",
        "CPU excluding setup": f"{(result['cpu_total'] - result['cpu_setup']) * us:.0f} us/record",
        "left out (probe gc+trim, sampler)": f"{result['probe_cpu']:.1f} s + {result['sampler_cpu']:.2f} s",
        "DAG file parse before dag.test": f"{result['parse_cpu']:.1f} s",
        "RSS before dag.test": f"{result['baseline_rss_kb'] / 1024:.0f} MB",
        "largest task: peak RSS": f"{largest[0]} {largest[1]['peak_kb'] / 1024:.0f} MB",
        "largest growth over its start": f"{growing[0]} +{growing[1]['growth_kb'] / 1024:.0f} MB",
        "moto / emulator CPU (not counted)": f"{result['servers_cpu']['moto']:.1f} s / {result['servers_cpu']['emulator']:.1f} s",
    }
    for name in TASK_ORDER:
        task = tasks.get(name)
        if task is None:
            rows[f"{name}"] = "(no such task)"
            continue
        rows[f"{name}"] = (
            f"x{task['instances']}: {task['cpu'] * us:.1f} us/rec, "
            f"peak {task['peak_kb'] / 1024:.0f} MB (+{task['growth_kb'] / 1024:.0f})"
        )
    return rows


def print_table(results: list[dict[str, Any]]) -> None:
    columns = [summary_rows(result) for result in results]
    width = max(len(key) for key in columns[0])
    cells = [max(len(column[key]) for key in column) for column in columns]
    for key in columns[0]:
        print(
            f"{key:<{width}}  "
            + "  ".join(f"{column.get(key, ''):>{cell}}" for column, cell in zip(columns, cells, strict=True))
        )


def setting(text: str) -> tuple[str, Any]:
    name, _, value = text.partition("=")
    return name.strip(), json.loads(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--per-object", type=int, default=5_000)
    parser.add_argument("--files-per-chunk", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--root", type=Path, default=ROOT, help="the tree to measure (default: this one)")
    parser.add_argument(
        "--compare", type=Path, default=None, metavar="OLD_ROOT", help="also measure this tree, after --root"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="partition folder (default bench/out/dag-<records>-<per-object>-seed<seed>)",
    )
    parser.add_argument("--batches-per-second", type=float, default=100_000, help="the connection's client pace")
    parser.add_argument("--max-workers", type=int, default=4)
    parser.add_argument("--sample-ms", type=float, default=50)
    parser.add_argument("--no-trim", action="store_true", help="do not gc + malloc_trim before each task")
    parser.add_argument(
        "--setting",
        type=setting,
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="another run setting, e.g. shards=8 (passed to every tree measured: only settings it knows)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write every measurement here")
    parser.add_argument("--show", type=Path, default=None, help="print the table of a --json file, measure nothing")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--settings", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--serve-emulator", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_emulator is not None:
        serve_emulator(args.serve_emulator)
        return
    if args.child:
        child(args)
        return
    if args.show:
        print_table(json.loads(args.show.read_text()))
        return

    data = args.data or ROOT / "bench" / "out" / f"dag-{args.records}-{args.per_object}-seed{args.seed}"
    started = time.process_time()
    paths = generate(data, args.records, args.per_object, args.seed)
    size = sum(path.stat().st_size for path in paths)
    print(
        f"partition: {len(paths)} objects, {size / 1e6:,.0f} MB on disk in {data} ({time.process_time() - started:.0f} s)"
    )
    print(f"load before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}", flush=True)
    logs = ROOT / "bench" / "out" / "dag-logs"
    logs.mkdir(parents=True, exist_ok=True)
    results = []
    for root in [args.root] + ([args.compare] if args.compare else []):
        load_before = os.getloadavg()
        results.append(measure(root, paths, args, logs))
        results[-1]["load"] = {"before": load_before, "after": os.getloadavg()}
        print(f"load after {root}: {' '.join(f'{value:.2f}' for value in os.getloadavg())}", flush=True)
    print()
    extra = "".join(f", {name} {value}" for name, value in args.setting)
    print(f"{args.records:,} records, {args.per_object:,} per object, files_per_chunk {args.files_per_chunk}{extra}")
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
