"""The data-efficiency report: plan, seeds, aggregation, readout, resume."""

import json
import os
import subprocess
import sys

import pytest
from absl import flags
from helpers import FAST, ROOT, parse

from cpc_tf import reporting
from cpc_tf.config import FlagError
from cpc_tf.protocols import supervised


def test_config_round_trips_through_flag_lines(tmp_path):
    config = parse(f"--flagfile={ROOT}/flags/cifar10.cfg")
    path = tmp_path / "resolved.cfg"
    path.write_text("\n".join(reporting.config_flag_lines(config)) + "\n")
    assert parse(f"--flagfile={path}") == config


def test_plan_runs_every_method_per_fraction_and_seed(tmp_path):
    config = parse(f"--flagfile={ROOT}/flags/demo.cfg")
    flagfiles = {m: f"flags/{m}.cfg" for m in reporting.METHODS}
    stages = reporting.plan(
        config, str(tmp_path), [1, 10], flagfiles, {}, seeds=2
    )
    assert stages[0].method == "pretrain"
    names = [s.name for s in stages[1:]]
    assert names == [
        f"{m}_{f}pct_seed{s}"
        for f in (1, 10)
        for s in (0, 1)
        for m in reporting.METHODS
    ]
    random = stages[2]
    assert "--random_init" in random.args
    assert f"--pretrained_dir={tmp_path}/pretrain" in random.args
    assert "--label_fraction=1" in random.args and "--seed=0" in random.args
    supervised = stages[4]
    assert not any(a.startswith("--pretrained_dir") for a in supervised.args)
    assert "--image_size=28" in supervised.args
    # The baseline is a network of the CPC encoder's shape.
    for line in reporting.encoder_shape_flags(config.model):
        assert line in supervised.args
    assert "--stem_pool=false" in supervised.args
    assert supervised.directory == f"{tmp_path}/supervised_1pct_seed0"
    pixels = stages[5]
    assert "--probe_features=pixels" in pixels.args
    # Every stage holds out what pretraining held out.
    for stage in stages[1:]:
        assert "--holdout=500.0" in stage.args
        assert "--holdout_seed=0" in stage.args
    assert {s.seed for s in stages[1:]} == {0, 1}


def test_the_supervised_baseline_follows_the_encoder_shape(tmp_path):
    config = parse(
        f"--flagfile={ROOT}/flags/demo.cfg",
        "--stem_stride=1",
        "--encoder_widths=8,16",
    )
    stages = reporting.plan(
        config,
        str(tmp_path),
        [10],
        {"supervised": f"{ROOT}/flags/supervised_demo.cfg"},
        {"supervised": ["--stem_stride=2"]},
        methods=["supervised"],
    )
    values = flags.FlagValues()
    supervised.define_flags(values)
    values(["supervised", *stages[1].args])
    model = supervised.parse_config(values).model
    assert model.stem_stride == 1 and model.encoder_widths == (8, 16)
    assert model.norm == "batch"


def test_plan_runs_only_the_methods_asked_for(tmp_path):
    config = parse(f"--flagfile={ROOT}/flags/demo.cfg")
    flagfiles = {m: f"flags/{m}.cfg" for m in reporting.METHODS}
    stages = reporting.plan(
        config,
        str(tmp_path),
        [10],
        flagfiles,
        {},
        methods=["pixels", "linear_cpc"],
    )
    assert [s.name for s in stages] == [
        "pretrain",
        "linear_cpc_10pct",
        "pixels_10pct",
    ]


def records(values):
    return [
        dict(method=m, label_fraction=f, seed=s, top1=v)
        for (m, f), per_seed in values.items()
        for s, v in enumerate(per_seed)
    ]


def test_aggregate_readout_table_and_plot(tmp_path):
    values = {
        ("linear_cpc", 1.0): [0.50, 0.54, 0.52],
        ("linear_cpc", 10.0): [0.70, 0.72, 0.74],
        ("finetune", 10.0): [0.80, 0.82, 0.84],
        ("supervised", 100.0): [0.78, 0.80, 0.79],
        ("supervised", 1.0): [0.2, 0.3, 0.25],
    }
    cells = reporting.aggregate(records(values))
    cell = cells[("linear_cpc", 1.0)]
    assert cell["mean"] == pytest.approx(52.0) and cell["n"] == 3
    assert cell["std"] == pytest.approx(2.0)  # sample std over seeds
    readout = reporting.readout(cells, [1, 10, 100])
    assert readout["fraction"] == 10.0 and readout["method"] == "finetune"
    assert readout["target"] == pytest.approx(79.0)
    assert "10% of the labels" in readout["sentence"]
    values[("finetune", 10.0)] = [0.5, 0.5, 0.5]
    missed = reporting.readout(
        reporting.aggregate(records(values)), [1, 10, 100]
    )
    assert missed["fraction"] is None
    assert "does not reach" in missed["sentence"]
    table = reporting.markdown_table(cells, [1, 10, 100])
    assert "| Linear on CPC features | 52.0 ± 2.0 (n=3) |" in table
    assert table.count("\n") == 2 + len(reporting.METHODS)
    reporting.plot(cells, [1, 10, 100], tmp_path / "plot.png", "test")
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_statement_names_the_test_set_and_the_hold_out():
    summary = {"holdout": {"count": 5000, "file": "h.txt", "seed": 0}}
    test_set = {"source": "x hold-out (5000, seed 0)", "examples": 5000}
    good = [dict(test_set=test_set, test_excluded_from_pretraining=True)]
    text = reporting.test_set_statement(good, summary)
    assert "5000 images" in text and "did not see" in text
    supervised = dict(
        method="supervised",
        test_set=test_set,
        test_excluded_from_pretraining=None,
    )
    text = reporting.test_set_statement(good + [supervised], summary)
    assert "did not see" in text
    unknown = dict(supervised, method="finetune")
    text = reporting.test_set_statement(good + [unknown], summary)
    assert "not recorded" in text
    bad = [dict(test_set=test_set, test_excluded_from_pretraining=False)]
    assert "WARNING" in reporting.test_set_statement(bad, summary)


def _tiny_report(report_dir, *extra):
    """The demo report's command with 3-step runs into `report_dir`."""
    return [
        sys.executable,
        "-m",
        "cpc_tf.report",
        "--flagfile=flags/report_demo.cfg",
        *FAST,
        "--steps=3",
        "--seeds=1",
        f"--report_dir={report_dir}",
        "--linear_args=batch_size=8,eval_batch_size=500,probe_epochs=3",
        *extra,
    ]


@pytest.mark.slow
def test_report_end_to_end_resumes_elsewhere_from_its_archive(tmp_path):
    archive = tmp_path / "archive"

    def command(report_dir, *extra):
        return _tiny_report(
            report_dir,
            "--stage_workers=1",  # in this process, one at a time
            "--knn_every=3",
            "--knn_memory=200",
            "--knn_queries=100",
            "--fractions=100",
            "--finetune_args=phase1_steps=2,phase2_steps=2,batch_size=8,"
            "eval_batch_size=500",
            "--supervised_args=steps=3,batch_size=8,eval_batch_size=500",
            f"--archive_dir={archive}",
            *extra,
        )

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    def run(*args):
        process = subprocess.run(
            command(*args), cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert process.returncode == 0, (
            process.stdout[-2000:] + process.stderr[-3000:]
        )
        return process.stdout

    stages = 1 + len(reporting.METHODS)
    # One machine: pretraining and the probes only.
    first = run(tmp_path / "here", "--only=pretrain,linear_*")
    assert "linear_random_100pct: finished" in first
    assert "supervised_100pct: not selected, skipped" in first
    partial = json.loads((archive / "report.json").read_text())
    assert not partial["complete"] and len(partial["stage_seconds"]) == 3
    assert (archive / "pretrain" / "encoder.keras").exists()
    assert not (archive / "pretrain" / "checkpoints").exists()
    assert not (archive / "linear_cpc_100pct" / "classifier.keras").exists()
    # Another machine, an empty report directory: the archive resumes it.
    elsewhere = tmp_path / "elsewhere"
    second = run(elsewhere)
    assert "pretrain: done earlier, skipped" in second
    assert "linear_cpc_100pct: done earlier, skipped" in second
    assert f"[{stages}/{stages}] pixels_100pct: finished" in second
    data = json.loads((elsewhere / "report.json").read_text())
    assert data["complete"] and data["seeds"] == 1
    assert {c["method"] for c in data["cells"]} == set(reporting.METHODS)
    assert "did not see" in data["test_set"]
    # The random-init score at step 0, then every 3 steps.
    assert [s for s, _ in data["pretraining"]["knn_top1"][:2]] == [0, 3]
    assert set(data["stage_machines"]) == set(data["stage_seconds"])
    assert len(data["stage_seconds"]) == stages
    for name in ("report.png", "knn.png"):
        assert (elsewhere / name).exists()
    text = (elsewhere / "report.md").read_text()
    assert "Readout:" in text and "mnist5k:test, 1000 images" in text
    third = run(elsewhere)
    assert third.count("done earlier, skipped") == stages
    resumed = json.loads((elsewhere / "report.json").read_text())
    assert resumed["stage_seconds"] == data["stage_seconds"]
    assert json.loads((archive / "report.json").read_text())["complete"]


def test_only_fails_on_a_stage_whose_needs_are_not_met(tmp_path):
    config = parse(f"--flagfile={ROOT}/flags/demo.cfg")
    flagfiles = {m: f"flags/{m}.cfg" for m in reporting.METHODS}
    with pytest.raises(FlagError, match="--only: linear_cpc_10pct needs"):
        reporting.run_report(
            config,
            str(tmp_path / "r"),
            [10],
            flagfiles,
            {},
            only=["linear_cpc_*"],
        )
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_report_runs_stages_side_by_side(tmp_path):
    command = _tiny_report(
        tmp_path,
        "--knn_every=0",
        "--fractions=100",
        "--methods=linear_random,supervised,pixels",
        "--supervised_args=steps=3,batch_size=8,eval_batch_size=500",
        "--stage_workers=2",
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert process.returncode == 0, process.stderr[-3000:]
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["complete"] and len(data["stage_seconds"]) == 4
    # The supervised baseline, which needs no pretraining, started beside
    # it; the probes, which do, after it.
    lines = process.stdout.splitlines()
    pretrained = next(
        i for i, line in enumerate(lines) if "pretrain: finished" in line
    )
    assert "[3/4] supervised_100pct: running ..." in lines[:pretrained]
    assert "[2/4] linear_random_100pct: running ..." in lines[pretrained:]
    # The stages ran in worker processes, not in the report's.
    log = (tmp_path / "pixels_100pct.log").read_text()
    assert log.startswith(f"{sys.executable} -m cpc_tf.linear_eval")


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--methods", "linear_cpc,knn"),
        ("--stage_workers", "0"),
        ("--only", "finetune_1pct"),
        ("--archive_unfinished", "true"),
    ],
)
def test_bad_report_flags_fail_in_a_line(tmp_path, flag, value):
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "cpc_tf.report",
            "--flagfile=flags/report_demo.cfg",
            f"{flag}={value}",
            f"--report_dir={tmp_path}/report",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    output = process.stdout + process.stderr
    assert process.returncode == 1
    errors = [line for line in output.splitlines() if flag in line]
    assert errors and value.split(",")[-1] in errors[0], output[-2000:]
    assert "Traceback" not in output
    assert not os.path.exists(f"{tmp_path}/report")


def test_a_damaged_stage_record_is_not_done(tmp_path):
    from cpc_tf import reporting

    stage = reporting.Stage(
        name="linear_cpc_1pct_seed0",
        method="linear_cpc",
        fraction=1.0,
        seed=0,
        protocol="linear_eval",
        args=(f"--model_dir={tmp_path}",),
    )
    assert not reporting.stage_done(stage)
    (tmp_path / "results.json").write_text('{"top1": 0.4')
    assert not reporting.stage_done(stage)
    (tmp_path / "results.json").write_text('{"top1": 0.4}')
    assert reporting.stage_done(stage)
