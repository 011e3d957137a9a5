"""deploy/: the Containerfile, the systemd unit and the cylc flow parse, name the CPU torch index, and
run commands this CLI accepts (checked with --dry-run against the shipped campaign)."""

from __future__ import annotations

import configparser
import json
import re
import shlex

import pytest
from typer.testing import CliRunner

from align_da_ops.campaign import load_campaign
from align_da_ops.cli import app
from align_da_ops.errors import AlignDAError
from align_da_ops.times import CycleTime

from factories import REPO

DEPLOY = REPO / "deploy"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
runner = CliRunner()


def _torch_pin() -> str:
    match = re.search(r'"torch==([\d.]+)"', (REPO / "pyproject.toml").read_text())
    assert match, "pyproject pins torch"
    return match.group(1)


def _instructions(path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in path.read_text().splitlines() if not l.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def _dry_run(args: list[str], monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    res = runner.invoke(app, [*args, "--dry-run"])
    assert res.exit_code == 0, (args, res.output, res.exception)
    assert "would run" in res.output


def test_containerfile_builds_a_cpu_image_run_as_a_user_with_a_home(monkeypatch):
    steps = _instructions(DEPLOY / "Containerfile")
    runs = " && ".join(a for i, a in steps if i == "RUN")
    torch_installs = [c for c in runs.split("&&") if "pip install" in c and "torch" in c]
    assert torch_installs and all(f"--index-url {CPU_INDEX}" in c and f"torch=={_torch_pin()}" in c for c in torch_installs)
    env = " ".join(a for i, a in steps if i == "ENV")
    home = re.search(r"HOME=(\S+)", env).group(1)
    assert f"--home-dir {home}" in runs and f"chown -R alignda:alignda {home}" in runs
    assert re.search(r"XDG_CACHE_HOME=" + re.escape(home), env)
    assert [a for i, a in steps if i == "USER"] == ["alignda"]
    assert [a for i, a in steps if i == "STOPSIGNAL"] == ["SIGTERM"]
    assert "--stop-timeout" in (DEPLOY / "Containerfile").read_text()  # the stop grace is documented
    entry = json.loads(next(a for i, a in steps if i == "ENTRYPOINT"))
    cmd = json.loads(next(a for i, a in steps if i == "CMD"))
    assert entry[0] == "align-da"
    _dry_run(entry[1:] + cmd, monkeypatch)


def test_systemd_unit_is_complete_and_its_command_runs(monkeypatch):
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(DEPLOY / "align-da.service")
    assert "network-online.target" in unit["Unit"]["Wants"] and "network-online.target" in unit["Unit"]["After"]
    service = unit["Service"]
    assert service["User"] == "alignda" and service["KillSignal"] == "SIGTERM" and int(service["TimeoutStopSec"]) >= 600
    assert service["CPUQuota"].endswith("%") and "OMP_NUM_THREADS=" in service["Environment"] and service["MemoryMax"]
    binary, *args = shlex.split(service["ExecStart"].replace("%i", "tiny-3dvar"))
    venv = binary.removesuffix("/bin/align-da")
    assert venv == f"{service['WorkingDirectory']}/.venv"
    readme = (DEPLOY / "README.md").read_text()
    assert f"useradd --system --home-dir {service['WorkingDirectory']}" in readme and "python3.11 -m venv .venv" in readme
    assert CPU_INDEX in readme
    _dry_run(args, monkeypatch)
    # every code not retried is a permanent error class's exit code
    codes = {int(c) for c in service["RestartPreventExitStatus"].split()}
    permanent = {cls.exit_code for cls in _error_classes()} - {1, 3, 4, 8, 12}
    assert codes == permanent


def _error_classes():
    seen, todo = set(), [AlignDAError]
    while todo:
        cls = todo.pop()
        seen.add(cls)
        todo.extend(cls.__subclasses__())
    return seen


def test_cylc_flow_cycles_the_campaign_in_order(monkeypatch):
    text = (DEPLOY / "flow.cylc").read_text()
    assert text.startswith("#!Jinja2")
    values = dict(re.findall(r'{%\s*set\s+(\w+)\s*=\s*"([^"]*)"\s*%}', text))
    rendered = re.sub(r"{{\s*(\w+)\s*}}", lambda m: values[m.group(1)], text)
    setting = lambda key: re.search(rf"^\s*{re.escape(key)}\s*=\s*(.+)$", rendered, re.M).group(1).strip()  # noqa: E731
    assert setting("UTC mode") == "True" and setting("runahead limit") == "P0"
    assert re.search(r"PT6H\s*=\s*\"\"\"\s*cycle\[-PT6H\] => cycle\s*\"\"\"", rendered)
    monkeypatch.chdir(REPO)
    campaign, _ = load_campaign(values["CAMPAIGN"])
    assert CycleTime.parse(setting("initial cycle point")) == campaign.first
    assert CycleTime.parse(setting("final cycle point")) == campaign.last
    script = shlex.split(setting("script").strip('"'))
    command = script[script.index("&&") + 1:]
    assert command[0] == ".venv/bin/align-da" and "cycle" in command
    at = command[command.index("--at") + 1]
    assert at == "$CYLC_TASK_CYCLE_POINT"
    assert CycleTime.parse("20000111T0000Z") == campaign.first  # cylc's point format reaches --at unchanged


@pytest.mark.parametrize("point", ["20000111T0000Z", "20000111T00Z", "2000-01-11T00:00Z"])
def test_cycle_points_in_cylc_formats(point):
    assert CycleTime.parse(point) == CycleTime.parse("2000011100")


def test_gpu_check_script_runs_end_to_end_at_reduced_size(tmp_path):
    """deploy/gpu-check.sh (issue 19's one prepared GPU run) as a CPU dry run on a tiny grid: every step
    exits 0 and leaves its JSON rows (seconds, FLOPs) and profiler summaries."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "OUT": str(tmp_path), "GRID": "16x32x3", "STEPS_PAPER": "2", "COMPILE": "0", "MEMBERS": "1,2",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", str(DEPLOY / "gpu-check.sh")], env=env, capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = (tmp_path / "summary.txt").read_text()
    assert "fast rc=0" in summary and "paper rc=0" in summary, summary
    fast = json.loads((tmp_path / "fast.json").read_text())["rows"]
    assert {(r["dtype"], r["members"]) for r in fast} == {(d, m) for d in ("fp32", "bf16") for m in (1, 2)}
    assert all(r["seconds"] > 0 and r["flops"] > 0 and r["evaluations"] == 9 for r in fast)
    paper = json.loads((tmp_path / "paper.json").read_text())["rows"]
    assert {r["evaluations"] for r in paper} == {2 * 3 + 1}  # steps x (1 + 2 corrections) + 1
    for name in ("profile-fast.txt", "profile-paper.txt"):
        assert "conv" in (tmp_path / name).read_text()
