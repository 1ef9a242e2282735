"""The data-efficiency report: stage plan, tables, plot, resumption."""

import json
import os
import subprocess
import sys

import pytest
from helpers import FAST, ROOT, parse

from cpc_tf import report


def test_config_round_trips_through_flag_lines(tmp_path):
    config = parse(f"--flagfile={ROOT}/flags/cifar10.cfg")
    path = tmp_path / "resolved.cfg"
    path.write_text("\n".join(report.config_flag_lines(config)) + "\n")
    assert parse(f"--flagfile={path}") == config


def test_plan_runs_every_method_per_fraction(tmp_path):
    config = parse(f"--flagfile={ROOT}/flags/demo.cfg")
    flagfiles = {m: f"flags/{m}.cfg" for m in report.METHODS}
    stages = report.plan(config, str(tmp_path), [1, 10], flagfiles, {})
    assert stages[0].method == "pretrain"
    names = [s.name for s in stages[1:]]
    assert names == [f"{m}_{f}pct" for f in (1, 10) for m in report.METHODS]
    random = stages[2]
    assert "--random_init" in random.args
    assert f"--pretrained_dir={tmp_path}/pretrain" in random.args
    assert "--label_fraction=1" in random.args
    supervised = stages[4]
    assert not any(a.startswith("--pretrained_dir") for a in supervised.args)
    assert "--image_size=28" in supervised.args
    assert supervised.directory == f"{tmp_path}/supervised_1pct"


def test_table_and_plot(tmp_path):
    records = [
        dict(method=m, label_fraction=f, top1=0.1 * i + f / 1000)
        for i, m in enumerate(report.METHODS)
        for f in (1, 10, 100)
    ]
    table = report.markdown_table(records, [1, 10, 100])
    assert "| Linear on CPC features | 0.1 | 1.0 | 10.0 |" in table
    assert table.count("\n") == 6
    report.plot(records, [1, 10, 100], tmp_path / "plot.png", "test")
    assert (tmp_path / "plot.png").stat().st_size > 1000


@pytest.mark.slow
def test_report_end_to_end_and_resume(tmp_path):
    command = [
        sys.executable,
        "-m",
        "cpc_tf.report",
        "--flagfile=flags/demo.cfg",
        *FAST,
        "--steps=3",
        "--fractions=100",
        f"--report_dir={tmp_path}",
        "--linear_args=steps=3,batch_size=8,eval_batch_size=500",
        "--finetune_args=phase1_steps=2,phase2_steps=2,batch_size=8,"
        "eval_batch_size=500",
        "--supervised_args=steps=3,batch_size=8,eval_batch_size=500",
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    first = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert "[5/5] supervised_100pct: finished" in first.stdout
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["complete"]
    assert {r["method"] for r in data["records"]} == set(report.METHODS)
    for record in data["records"]:
        assert 0.0 <= record["top1"] <= 1.0
    assert (tmp_path / "report.png").exists()
    assert "Fine-tuned CPC encoder" in (tmp_path / "report.md").read_text()
    second = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("done earlier, skipped") == 5
    resumed = json.loads((tmp_path / "report.json").read_text())
    assert resumed["stage_seconds"] == data["stage_seconds"]
    assert len(data["stage_seconds"]) == 5
