"""One package to deploy: the console registers once, and the Dockerfile's steps work, in a new virtualenv.

No container runtime runs where this project is developed, so the image is not built here. The slow tests do
what the Dockerfile does instead: build the wheel from what its first stage copies (``uv build --wheel``),
create a virtualenv on the image's Python, install the pinned requirements with the image's Airflow version and
then the wheel without dependencies, copy only the DAG files into a new AIRFLOW_HOME, and run that Airflow from
an empty directory without PYTHONPATH, so nothing of this source tree is importable. There, the provider (the
``mparticle`` connection type) and the console plugin are registered, once, with the repository's plugins/
folder in place, and ``airflow dags test`` replays a partition from a moto server into the Events API emulator
(both running in this test's process).

Building the wheel and the virtualenv takes about 10 s from uv's cache, the whole module under a minute. With a
cold cache uv downloads the pinned requirements from PyPI (about 450 MB), which is seconds on a fast network and
minutes on a slow one.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.airflow.conftest import BUCKET, POOL, PREFIX, ROOT
from tests.airflow.test_dag_end_to_end import record as quarantine_record  # in the window, two blocked events

# The slow tests' first one builds and installs: minutes on a cold uv cache, within this bound.
pytestmark = [pytest.mark.airflow, pytest.mark.timeout(2400)]

DIST = "mparticle-quarantine-backfill"
PACKAGES = ("mparticle_backfill", "mparticle_backfill_airflow", "mparticle_backfill_console")
CONSOLE = "mparticle_backfill_console"  # the plugin's name
CONSOLE_ENTRY_POINT = "mparticle_backfill_console.plugin:MParticleBackfillConsolePlugin"
PROVIDER_ENTRY_POINT = "mparticle_backfill_airflow.provider:get_provider_info"
DAG_ID = "mparticle_quarantine_backfill"
DAY = "2026-11-20"
RUN_CONF = {"partition_date": DAY, "reference_time": "2026-11-21T06:00:00Z"}

# What the plugins manager registered, and what it could not (run by the Airflow under test).
PLUGINS_SCRIPT = """
import json
from airflow import plugins_manager
plugins = [{"name": p["name"], "source": str(p["source"])} for p in plugins_manager.get_plugin_info(["source"])]
print(json.dumps({"plugins": plugins, "errors": plugins_manager.get_import_errors()}))
"""


def project_version() -> str:
    return re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)


def run(command: Sequence[str | Path], *, env: Mapping[str, str], cwd: Path, timeout: float) -> str:
    """Run a command; its stdout, or a failure showing the end of what it printed."""
    done = subprocess.run(
        [str(part) for part in command], env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, command))} failed ({done.returncode}):\n"
            f"{done.stdout[-4000:]}\n--- stderr ---\n{done.stderr[-4000:]}"
        )
    return done.stdout


def registered_plugins(python: str | Path, env: Mapping[str, str], cwd: Path) -> dict:
    return json.loads(run([python, "-c", PLUGINS_SCRIPT], env=env, cwd=cwd, timeout=300).strip().splitlines()[-1])


# -- The console registers once, by the package's entry point (this repository's venv) ------------------------


def test_the_console_registers_once_by_its_entry_point(tmp_path):
    """As `make run` and the tests start Airflow: the plugins folder is the repository's plugins/."""
    env = {**os.environ, "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins")}
    found = registered_plugins(sys.executable, env, tmp_path)
    consoles = [plugin for plugin in found["plugins"] if plugin["name"] == CONSOLE]
    assert len(consoles) == 1, found
    assert consoles[0]["source"].startswith(f"{DIST}=={project_version()}: EntryPoint("), consoles[0]
    assert CONSOLE_ENTRY_POINT in consoles[0]["source"]
    assert found["errors"] == {}, (
        "plugin import errors (a leftover include/*.egg-info from a setuptools build makes Airflow find the "
        f"package twice: `make venv` removes it): {found['errors']}"
    )


def test_a_plugins_folder_file_importing_the_console_would_register_it_twice(tmp_path):
    """Why plugins/ holds nothing of the console: a one-line import of the plugin class there is a second one.

    The plugins manager loads the folder first and keeps that copy; the entry point's is refused as already
    registered, an import error Airflow shows.
    """
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "mparticle_backfill_console_plugin.py").write_text(
        "from mparticle_backfill_console.plugin import MParticleBackfillConsolePlugin  # noqa: F401\n"
    )
    env = {**os.environ, "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins)}
    found = registered_plugins(sys.executable, env, tmp_path)
    assert [plugin["source"] for plugin in found["plugins"] if plugin["name"] == CONSOLE] == [
        "$PLUGINS_FOLDER/mparticle_backfill_console_plugin.py"
    ]
    assert list(found["errors"].values()) == [f"Plugin {CONSOLE!r} already registered, skipping"]


def test_the_plugins_folder_holds_only_its_readme():
    """plugins/ stays for the layout (its README says where the console is): no module the manager would load."""
    assert sorted(path.name for path in (ROOT / "plugins").iterdir() if path.name != "__pycache__") == ["README.md"]


# -- The Dockerfile's steps in a new virtualenv ----------------------------------------------------------------


def dockerfile_image() -> tuple[str, str]:
    """(Airflow version, Python version) of the Dockerfile's base image."""
    match = re.search(
        r"^ARG AIRFLOW_IMAGE=apache/airflow:(\d+\.\d+\.\d+)-python(\d+\.\d+)$",
        (ROOT / "Dockerfile").read_text(),
        re.MULTILINE,
    )
    assert match, "the Dockerfile's ARG AIRFLOW_IMAGE names apache/airflow:<version>-python<version>"
    return match.group(1), match.group(2)


def dockerfile_wheel_sources() -> list[str]:
    """What the Dockerfile's wheel stage copies from the build context (the wheel is built from these only)."""
    stage = (ROOT / "Dockerfile").read_text().split(" AS wheel\n", 1)[1].split("\nFROM ", 1)[0]
    sources = []
    for line in stage.splitlines():
        if line.startswith("COPY "):
            sources += [word for word in line.split()[1:-1] if not word.startswith("--")]
    return sources


def pinned(name: str) -> str:
    return re.search(rf"^{re.escape(name)}==(\S+)$", (ROOT / "requirements.txt").read_text(), re.MULTILINE).group(1)


def find_uv() -> str:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv, "uv is installed in the venv by `make venv`"
    return uv


@dataclass(frozen=True)
class Deployment:
    wheel: Path
    python: Path  # the new virtualenv's
    airflow: Path
    home: Path  # its AIRFLOW_HOME
    env: dict[str, str]  # the whole environment of its processes
    cwd: Path  # an empty directory
    seconds: float  # building and installing

    def airflow_cli(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 300) -> str:
        return run([self.airflow, *args], env=env or self.env, cwd=self.cwd, timeout=timeout)

    def airflow_json(self, *args: str, env: Mapping[str, str] | None = None) -> list[dict]:
        """An Airflow command's ``--output json``: its last line (warnings may come before it on stdout)."""
        printed = self.airflow_cli(*args, "--output", "json", env=env).strip()
        try:
            return json.loads(printed.splitlines()[-1])
        except (IndexError, ValueError):
            pytest.fail(f"airflow {' '.join(args)} printed no JSON: {printed[-2000:]!r}")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    started = time.monotonic()
    work = tmp_path_factory.mktemp("deployment")
    uv, uv_env = find_uv(), {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    airflow_version, python_version = dockerfile_image()
    assert airflow_version == pinned("apache-airflow"), "the image's Airflow is the one requirements.txt pins"
    assert f"--python-version {python_version}" in (ROOT / "requirements.txt").read_text(), (
        "requirements.txt is resolved for the image's Python"
    )

    # Stage 1: the wheel, from the files the Dockerfile's first stage copies.
    project = work / "project"
    project.mkdir()
    sources = dockerfile_wheel_sources()
    assert sources == ["pyproject.toml", "include/"], sources
    shutil.copy(ROOT / "pyproject.toml", project)
    shutil.copytree(ROOT / "include", project / "include", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    run([uv, "build", "--wheel", "--out-dir", work / "dist", project], env=uv_env, cwd=work, timeout=600)
    (wheel,) = (work / "dist").glob("*.whl")

    # Stage 2: the pinned requirements with the image's Airflow named, then the wheel without dependencies.
    venv = work / "venv"
    run([uv, "venv", "--python", python_version, venv], env=uv_env, cwd=work, timeout=600)
    python = venv / "bin" / "python"
    requirements = ["-r", ROOT / "requirements.txt"]
    run(
        [uv, "pip", "install", "--python", python, f"apache-airflow=={airflow_version}", *requirements],
        env=uv_env,
        cwd=work,
        timeout=1800,
    )
    run([uv, "pip", "install", "--python", python, "--no-deps", wheel], env=uv_env, cwd=work, timeout=300)
    run([uv, "pip", "check", "--python", python], env=uv_env, cwd=work, timeout=300)  # the pins satisfy the wheel

    # The DAG files only, in a new AIRFLOW_HOME; plugins/ as the repository has it.
    home = work / "airflow"
    (home / "dags").mkdir(parents=True)
    for dag_file in (ROOT / "dags").glob("*.py"):
        shutil.copy(dag_file, home / "dags")
    shutil.copytree(ROOT / "plugins", home / "plugins", ignore=shutil.ignore_patterns("__pycache__"))
    cwd = work / "cwd"
    cwd.mkdir()
    env = {
        "PATH": os.pathsep.join([str(venv / "bin"), "/usr/bin", "/bin"]),
        "HOME": os.environ.get("HOME", str(work)),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    deployed = Deployment(wheel, python, venv / "bin" / "airflow", home, env, cwd, time.monotonic() - started)
    deployed.airflow_cli("db", "migrate")
    deployed.airflow_cli("pools", "set", POOL, "2", "Caps concurrent Events API senders")
    yield deployed


@pytest.mark.deployment
def test_the_wheel_holds_the_packages_whole_and_registers_both_entry_points(deployment):
    with zipfile.ZipFile(deployment.wheel) as wheel:
        names = set(wheel.namelist())
        dist_info = f"{DIST.replace('-', '_')}-{project_version()}.dist-info"
        entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
    for package in PACKAGES:  # every file, Python or not (templates and static files would be package data)
        source = ROOT / "include" / package
        expected = {
            f"{package}/{path.relative_to(source).as_posix()}"
            for path in source.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        }
        assert expected <= names, sorted(expected - names)
    assert {name.split("/")[0] for name in names} == {*PACKAGES, dist_info}  # no tools/, tests/, dags/, plugins/
    assert f"[airflow.plugins]\n{CONSOLE} = {CONSOLE_ENTRY_POINT}\n" in entry_points
    assert f"[apache_airflow_provider]\nprovider_info = {PROVIDER_ENTRY_POINT}\n" in entry_points

    from mparticle_backfill import __version__
    from mparticle_backfill_airflow.provider import get_provider_info

    assert deployment.wheel.name.startswith(f"{DIST.replace('-', '_')}-{project_version()}-")
    assert __version__ == project_version()
    assert get_provider_info()["versions"] == [project_version()]


@pytest.mark.deployment
def test_the_packages_come_from_the_wheel_not_the_source_tree(deployment):
    script = (
        "import importlib.metadata, importlib.util, json, sys\n"
        "def importable(name):\n"
        "    try:\n"
        "        return importlib.util.find_spec(name) is not None\n"
        "    except ModuleNotFoundError:\n"
        "        return False\n"
        f"import {', '.join(PACKAGES)}\n"
        "print(json.dumps({\n"
        f"  'files': [m.__file__ for m in ({', '.join(PACKAGES)})],\n"
        "  'path': sys.path,\n"
        "  'dev_tools': [n for n in ('tools.emulator', 'tests.airflow') if importable(n)],\n"
        f"  'version': importlib.metadata.version({DIST!r}),\n"
        "}))\n"
    )
    found = json.loads(run([deployment.python, "-c", script], env=deployment.env, cwd=deployment.cwd, timeout=120))
    site_packages = deployment.python.parent.parent / "lib"
    assert all(Path(file).is_relative_to(site_packages) for file in found["files"]), found["files"]
    assert not [entry for entry in found["path"] if entry and Path(entry).resolve().is_relative_to(ROOT)]
    assert found["dev_tools"] == []
    assert found["version"] == project_version()


@pytest.mark.deployment
def test_the_provider_and_the_console_are_registered_once(deployment):
    plugins = deployment.airflow_json("plugins")
    consoles = [plugin for plugin in plugins if plugin["name"] == CONSOLE]
    assert len(consoles) == 1, plugins
    (console,) = consoles
    assert console["source"].startswith(f"{DIST}=={project_version()}: EntryPoint(")
    assert [view["url_route"] for view in console["external_views"]] == ["backfill-console"]
    assert [app["url_prefix"] for app in console["fastapi_apps"]] == ["/mparticle-backfill"]
    assert registered_plugins(deployment.python, deployment.env, deployment.cwd)["errors"] == {}

    hooks = deployment.airflow_json("providers", "hooks")
    assert [hook for hook in hooks if hook["connection_type"] == "mparticle"] == [
        {
            "connection_type": "mparticle",
            "class": "mparticle_backfill_airflow.events_api_hook.MParticleEventsHook",
            "conn_id_attribute_name": "mparticle_conn_id",
            "package_name": DIST,
            "hook_name": "mParticle Events API",
        }
    ]
    providers = deployment.airflow_json("providers", "list")
    assert [(p["package_name"], p["version"]) for p in providers if p["package_name"] == DIST] == [
        (DIST, project_version())
    ]


@pytest.mark.deployment
def test_airflow_dags_test_replays_a_partition(deployment, s3, connections):
    emulator = connections
    records = [quarantine_record(1001), quarantine_record(1002), quarantine_record(1001)]  # 1001 delivered twice
    body = gzip.compress(b"".join(json.dumps(record).encode() + b"\n" for record in records))
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{DAY}/mPTravel_20261120090000000001_00001.txt", Body=body)
    # The connections and the settings Variable, as the connections fixture set them for this process.
    env = {**deployment.env, **{k: v for k, v in os.environ.items() if k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))}}

    # The DAG folder as the dag-processor parses it: the DAG, and no import error (mparticle_backfills_check.py
    # defines no DAG and imports cleanly without a mparticle_backfills.yaml).
    dags = deployment.airflow_json("dags", "list", "--local", "--columns", "dag_id,fileloc", env=env)
    assert [(dag["dag_id"], Path(dag["fileloc"]).parent) for dag in dags] == [(DAG_ID, deployment.home / "dags")]
    assert deployment.airflow_json("dags", "list-import-errors", "--local", env=env) == []
    deployment.airflow_cli("dags", "test", DAG_ID, DAY, "--conf", json.dumps(RUN_CONF), env=env, timeout=900)

    sent = sorted(event["data"]["event_id"] for batch in emulator.state.batches for event in batch["events"])
    assert sent == [10010, 10011, 10020, 10021]  # the two blocked events of 1001 and 1002, once
    reports = [
        item["Key"]
        for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/_backfill/{DAY}/reports/")["Contents"]
        if item["Key"].endswith(".json")
    ]
    (report_key,) = reports
    report = json.loads(s3.get_object(Bucket=BUCKET, Key=report_key)["Body"].read())
    assert report["reconciled"] is True
    assert report["totals"]["replayed"] == 2 and report["totals"]["already_replayed"] == 1
    print(f"\nBuilt and installed in {deployment.seconds:.0f} s")
