"""Benchmark: the whole DAG as production runs it (a real scheduler), memory and CPU of each task process.

``bench_dag.py`` runs every task in one ``dag.test()`` process, where a task's memory can only be told as
growth over what the previous tasks left. Here a real Airflow (api-server, scheduler with the
LocalExecutor, dag-processor; SQLite) runs one DAG run of the same synthetic partition (``bench_dag``'s,
same objects, same settings, moto S3 and the Events API emulator without a rate limit, each in its own
process), and each task instance runs, as in production, in its own task process (forked by its
supervisor). A listener plugin (added to a copy of the plugins folder) measures inside each task process:

- **CPU**: the task process's user + system time from its fork (``getrusage``: its DAG parse, its
  start-up, the task body and what follows) and the body alone (``on_task_instance_running`` ->
  ``_success``). Airflow's own processes (api-server, scheduler with its executor workers, which
  supervise the task processes, dag-processor) are measured from ``/proc`` (each process and its reaped
  children), apart.
  The probe's sampler thread (below) measures its own CPU, which is taken out of both.
- **Memory**: the task process's peak RSS (``VmHWM``, reset at ``running``; it includes the pages the
  process shares with the supervisor it was forked from: Airflow's and the interpreter's), its RSS at
  ``running``, and, sampled every 100 ms, its private memory (``Private_Clean + Private_Dirty`` of
  ``/proc/self/smaps_rollup``: what this task alone holds, the pages it wrote or allocated) and PSS.

Output: per task (largest mapped instance), instances, CPU per record read (process and body), peak RSS,
RSS at start, peak private; totals; ``--json`` keeps every instance. Takes ~4 minutes at 200,000 records
on a 2-core machine, most of it sending to the emulator.

    .venv/bin/python bench/bench_worker.py --records 200000
    .venv/bin/python bench/bench_worker.py --records 1000000 --json bench/out/worker-1m.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_dag  # the partition, the servers and the Airflow environment of bench_dag

ROOT = bench_dag.ROOT
RUN_ID = "bench_worker"

PROBE_PLUGIN = '''
"""bench_worker's probe: CPU and memory of each task process, one JSON line each to $BENCH_PROBE_OUT."""
import json
import os
import resource
import threading
import time

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin


def _status(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _rollup():
    values = {}
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                values[parts[0].rstrip(":")] = int(parts[1])
    return values.get("Private_Clean", 0) + values.get("Private_Dirty", 0), values.get("Pss", 0)


def _cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class TaskProbe:
    def __init__(self):
        self.current = None
        self.stop = threading.Event()

    def _sample(self, current, stop):
        # Reading smaps_rollup costs a few ms in a large process: the sampler's own CPU is kept apart and
        # taken out of the task's (~0.5 s of a 20 s send task otherwise).
        while not stop.wait(0.1):
            started = time.thread_time()
            private, pss = _rollup()
            current["peak_private_kb"] = max(current["peak_private_kb"], private)
            current["peak_pss_kb"] = max(current["peak_pss_kb"], pss)
            current["probe_cpu"] += time.thread_time() - started

    @hookimpl
    def on_task_instance_running(self, previous_state, task_instance):
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # VmHWM := VmRSS
        except OSError:
            pass
        private, pss = _rollup()
        self.current = current = {
            "task_id": task_instance.task_id, "map_index": getattr(task_instance, "map_index", -1),
            "run_id": getattr(task_instance, "run_id", None),
            "pid": os.getpid(), "start_rss_kb": _status("VmRSS"), "start_private_kb": private,
            "peak_private_kb": private, "peak_pss_kb": pss, "cpu_at_running": _cpu(),
            "wall_start": time.time(), "probe_cpu": 0.0,
        }
        self.stop = threading.Event()
        threading.Thread(target=self._sample, args=(current, self.stop), daemon=True).start()

    def _end(self, task_instance, state):
        current, self.current = self.current, None
        if current is None:
            return
        self.stop.set()
        private, pss = _rollup()
        cpu = _cpu() - current["probe_cpu"]
        current.update(
            state=state, cpu_process=cpu, cpu_body=cpu - current["cpu_at_running"],
            wall=time.time() - current.pop("wall_start"), hwm_kb=_status("VmHWM"), end_rss_kb=_status("VmRSS"),
            peak_private_kb=max(current["peak_private_kb"], private), peak_pss_kb=max(current["peak_pss_kb"], pss),
        )
        with open(os.environ["BENCH_PROBE_OUT"], "a") as out:
            out.write(json.dumps(current) + "\\n")

    @hookimpl
    def on_task_instance_success(self, previous_state, task_instance):
        self._end(task_instance, "success")

    @hookimpl
    def on_task_instance_failed(self, previous_state, task_instance, error):
        self._end(task_instance, "failed")


class BenchProbePlugin(AirflowPlugin):
    name = "bench_task_probe"
    listeners = [TaskProbe()]
'''


def tree_cpu(pid: int) -> float:
    """CPU of a process, of its live descendants, and of the children each of them reaped (/proc)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        fields = stats.get(current)
        if fields:
            total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
        todo.extend(children.get(current, []))
    return total / os.sysconf("SC_CLK_TCK")


def run_state(database: Path) -> str | None:
    with sqlite3.connect(database, timeout=30) as db:
        row = db.execute("select state from dag_run where run_id = ?", (RUN_ID,)).fetchone()
    return row[0] if row else None


def measure(args: argparse.Namespace, paths: list[Path]) -> dict[str, Any]:
    import boto3

    sys.path.insert(0, str(ROOT))
    from tools.airflow_health import wait_for_api_server

    work = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    home, plugins = work / "airflow", work / "plugins"
    shutil.copytree(ROOT / "plugins", plugins, ignore=shutil.ignore_patterns("__pycache__"))
    (plugins / "bench_task_probe.py").write_text(PROBE_PLUGIN)
    probe_out = work / "probe.jsonl"
    log_path = ROOT / "bench" / "out" / "dag-logs" / f"worker-{args.records}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("w")
    s3_port, emulator_port, api_port = bench_dag.free_port(), bench_dag.free_port(), bench_dag.free_port()
    s3_url = f"http://127.0.0.1:{s3_port}"
    servers = [
        subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, str(Path(bench_dag.__file__).resolve()), "--serve-emulator",
                          str(emulator_port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]  # fmt: skip
    airflow: list[subprocess.Popen] = []
    try:
        bench_dag.wait_for(f"{s3_url}/", servers[0])
        bench_dag.wait_for(f"http://127.0.0.1:{emulator_port}/_emulator/stats", servers[1])
        env = bench_dag.airflow_env(ROOT, home, s3_url, emulator_port, args)
        env.update({
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(args.parallelism),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",  # only our run: no scheduled run of today beside it
            "BENCH_PROBE_OUT": str(probe_out),
        })  # fmt: skip

        def cli(*command: str) -> None:
            subprocess.run([sys.executable, "-m", "airflow", *command], env=env, cwd=ROOT, check=True, stdout=log,
                           stderr=log)  # fmt: skip

        cli("db", "migrate")
        cli("pools", "set", bench_dag.POOL, str(args.pool), "Events API senders")
        s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
        s3.create_bucket(Bucket=bench_dag.BUCKET)
        for path in paths:
            s3.put_object(Bucket=bench_dag.BUCKET, Key=f"{bench_dag.PREFIX}/{bench_dag.DAY}/{path.name}",
                          Body=path.read_bytes())  # fmt: skip
        cli("dags", "reserialize")
        cli("dags", "unpause", bench_dag.DAG_ID)

        def start(*command: str) -> subprocess.Popen:
            return subprocess.Popen([sys.executable, "-m", "airflow", *command], env=env, cwd=ROOT, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

        airflow.append(start("api-server", "--port", str(api_port)))
        wait_for_api_server(api_port, timeout=180)
        conf = {"partition_date": bench_dag.DAY, "reference_time": bench_dag.REFERENCE_TIME,
                "files_per_chunk": args.files_per_chunk, **dict(args.setting)}  # fmt: skip
        cli("dags", "trigger", bench_dag.DAG_ID, "--run-id", RUN_ID, "--conf", json.dumps(conf),
            "--logical-date", f"{bench_dag.DAY}T00:00:00+00:00")  # fmt: skip
        started = time.monotonic()
        airflow += [start("scheduler"), start("dag-processor")]
        print(f"[worker] run triggered on {len(paths)} objects; log: {log_path}", flush=True)
        state = None
        while time.monotonic() - started < args.timeout:
            state = run_state(home / "airflow.db")
            if state in ("success", "failed"):
                break
            time.sleep(3)
        wall = time.monotonic() - started
        airflow_cpu = {name: tree_cpu(process.pid) for name, process in
                       zip(("api-server", "scheduler", "dag-processor"), airflow, strict=True)}  # fmt: skip
        with urllib.request.urlopen(f"http://127.0.0.1:{emulator_port}/_emulator/stats") as answer:
            emulator = json.load(answer)
        reports = s3.list_objects_v2(
            Bucket=bench_dag.BUCKET, Prefix=f"{bench_dag.PREFIX}/_backfill/{bench_dag.DAY}/reports/"
        ).get("Contents", [])
        report = None
        for item in reports:
            if item["Key"].endswith(".json"):
                report = json.loads(s3.get_object(Bucket=bench_dag.BUCKET, Key=item["Key"])["Body"].read())
        lines = probe_out.read_text().splitlines() if probe_out.exists() else []
        instances = [instance for instance in map(json.loads, lines) if instance["run_id"] == RUN_ID]
        others = len(lines) - len(instances)
        return {
            "commit": bench_dag.git_state(ROOT),
            "records": args.records,
            "conf": conf,
            "state": state,
            "wall": wall,
            "airflow_cpu": airflow_cpu,
            "emulator": emulator,
            "report": report
            and {
                "records_read": report["summary"]["records_read"],
                "reconciled": report["reconciled"],
                "totals": report["totals"],
            },
            "instances": instances,
            "other_runs_instances": others,
            "log": str(log_path),
        }
    finally:
        for process in airflow:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 15)
        for process in airflow + servers:
            if process not in airflow:
                process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def print_table(result: dict[str, Any]) -> None:
    records = (result.get("report") or {}).get("records_read") or result["records"]
    us = 1e6 / records
    print(f"{result['records']:,} records, commit {result['commit']}, run {result['state']} in {result['wall']:.0f} s")
    if result.get("report"):
        totals = result["report"]["totals"]
        print(f"read {records:,}, replayed {totals.get('replayed', 0):,}, reconciled {result['report']['reconciled']}")
    print(f"batches accepted by the emulator: {result['emulator'].get('batches_accepted', 0):,}")
    if result.get("other_runs_instances"):
        print(f"WARNING: {result['other_runs_instances']} task instances of another run ran beside it")
    tasks: dict[str, list[dict[str, Any]]] = {}
    for instance in result["instances"]:
        tasks.setdefault(instance["task_id"], []).append(instance)
    header = ("task", "instances", "CPU us/rec (process)", "(body)", "peak RSS MB", "RSS at start", "peak private MB")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    total_process = total_body = 0.0
    for name in bench_dag.TASK_ORDER:
        found = tasks.get(name, [])
        if not found:
            continue
        process = sum(i["cpu_process"] for i in found)
        body = sum(i["cpu_body"] for i in found)
        total_process, total_body = total_process + process, total_body + body
        largest = max(found, key=lambda i: i["hwm_kb"])
        private = max(i["peak_private_kb"] for i in found)
        print(f"{name} | {len(found)} | {process * us:.1f} | {body * us:.1f} | {largest['hwm_kb'] / 1024:.0f} | "
              f"{largest['start_rss_kb'] / 1024:.0f} | {private / 1024:.0f}")  # fmt: skip
    print(f"all task processes | {len(result['instances'])} | {total_process * us:.1f} | {total_body * us:.1f} | | |")
    cpu = result["airflow_cpu"]
    # The executor's workers supervise the task processes and reap them: the scheduler's tree holds their CPU.
    scheduler_own = cpu["scheduler"] - total_process
    print(f"scheduler + executor workers (supervisors), task processes left out | | {scheduler_own * us:.1f} | | | |")
    print(f"api-server (Execution API) | | {cpu['api-server'] * us:.1f} | | | |")
    print(f"dag-processor | | {cpu['dag-processor'] * us:.1f} | | | |")
    print(f"everything | | {(cpu['scheduler'] + cpu['api-server'] + cpu['dag-processor']) * us:.1f} | | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--per-object", type=int, default=5_000)
    parser.add_argument("--files-per-chunk", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--parallelism", type=int, default=2, help="task processes at once (the machine's cores)")
    parser.add_argument("--pool", type=int, default=2, help="slots of the Events API pool (send tasks at once)")
    parser.add_argument("--batches-per-second", type=float, default=100_000, help="the connection's client pace")
    parser.add_argument("--max-workers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--setting", type=bench_dag.setting, action="append", default=[], metavar="NAME=JSON")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--show", type=Path, default=None, help="print the table of a --json file")
    args = parser.parse_args()
    if args.show:
        print_table(json.loads(args.show.read_text()))
        return
    data = ROOT / "bench" / "out" / f"dag-{args.records}-{args.per_object}-seed{args.seed}"
    paths = bench_dag.generate(data, args.records, args.per_object, args.seed)
    result = measure(args, paths)
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
