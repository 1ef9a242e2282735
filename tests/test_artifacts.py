"""Run directories on any TF file system: `ram://` end to end."""

import os

import keras
import numpy as np
import tensorflow as tf
from helpers import FAST, ROOT, parse

from cpc_tf import evaluation
from cpc_tf.config import DataConfig, OptimConfig, RunConfig
from cpc_tf.protocols import linear as linear_eval
from cpc_tf.protocols import pretrain
from cpc_tf.rundir import artifacts
from cpc_tf.serving import export


def test_json_round_trip_on_ram():
    path = "ram://artifacts/values.json"
    artifacts.write_json(path, {"a": [1, 2]})
    assert artifacts.read_json(path) == {"a": [1, 2]}


def test_pretrain_linear_eval_and_export_on_ram(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stray local "ram:" folder would show
    run_dir, probe_dir, export_dir = (
        "ram://e2e/pretrain",
        "ram://e2e/linear",
        "ram://e2e/export",
    )
    config = parse(
        f"--flagfile={ROOT}/flags/demo.cfg",
        *FAST,
        "--steps=2",
        "--knn_every=2",
        "--knn_memory=100",
        "--knn_queries=50",
        f"--model_dir={run_dir}",
    )
    summary = pretrain.run(config, verbose=False)
    assert summary["steps"] == 2 and summary["knn_top1"] is not None
    for name in (
        artifacts.CONFIG_FILE,
        artifacts.SUMMARY_FILE,
        artifacts.ENCODER_FILE,
        artifacts.BACKBONE_FILE,
        "checkpoints",
        "logs",
    ):
        assert tf.io.gfile.exists(os.path.join(run_dir, name)), name
    results = linear_eval.run(
        evaluation.LinearEvalConfig(
            data=DataConfig(holdout=500, label_fraction=10),
            optim=OptimConfig(clip_global_norm=0, ema_decay=0),
            run=RunConfig(model_dir=probe_dir, batch_size=8, steps=2),
            options=evaluation.ProbeOptions(
                pretrained_dir=run_dir,
                probe="cached",
                probe_epochs=3,
                eval_batch_size=500,
            ),
        ),
        verbose=False,
    )
    assert results["test_excluded_from_pretraining"] is True
    assert tf.io.gfile.exists(os.path.join(probe_dir, "results.json"))
    version = export.export(
        run_dir,
        export_dir,
        classifier=os.path.join(probe_dir, evaluation.CLASSIFIER_FILE),
    )
    assert version == f"{export_dir}/1"
    serving = tf.saved_model.load(version)
    images = tf.constant(np.zeros((2, 28, 28, 3), np.uint8))
    assert serving.signatures["serve_images"](images=images)[
        "embedding"
    ].shape == (2, 8)
    encoder = keras.saving.load_model(
        os.path.join(version, artifacts.ENCODER_FILE)
    )
    assert encoder.output_shape[-1] == 8
    assert os.listdir(tmp_path) == []
