"""Serving export: signatures against the Keras models, bad requests and
arguments, the command line, and `load_encoder` for transfer learning."""

import os
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import SMALL_BACKBONE
from keras import layers

from cpc_tf.config import DataConfig, ModelConfig, PretrainConfig
from cpc_tf.data.pipeline import eval_image, eval_patches
from cpc_tf.models import encoders
from cpc_tf.rundir import artifacts
from cpc_tf.serving.export import ExportArgumentError, export, load_encoder

GEOMETRY = dict(image_size=32, crop_size=28, patch_size=8, patch_stride=4)
GRID = 6
PATCHES = (GRID, GRID, 8, 8, 3)
LABELS = ("cat", "dog", "bird")
CLOSE = dict(rtol=1e-5, atol=1e-5)


def pictures(batch=3, size=(40, 36), channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, *size, channels), dtype=np.uint8)


def png(image):
    return tf.io.encode_png(image).numpy()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny run: its model dir plus a linear classifier."""
    keras.utils.set_random_seed(0)
    model_dir = tmp_path_factory.mktemp("run")
    encoder = encoders.PatchEncoder(encoders.resnet_v2(**SMALL_BACKBONE))
    encoder.build((None,) + PATCHES)
    artifacts.save_encoder(str(model_dir), encoder, PATCHES)
    PretrainConfig(
        data=DataConfig(**GEOMETRY),
        model=ModelConfig(
            encoder_depth=0,
            encoder_blocks=(1,),
            encoder_widths=(8,),
            encoder_output_widths=(16,),
            stem_width=8,
            stem_kernel=3,
            stem_pool=False,
        ),
    ).to_json(model_dir / artifacts.CONFIG_FILE)
    inputs = keras.Input(PATCHES)
    pooled = layers.GlobalAveragePooling2D()(encoder(inputs))
    linear = keras.Model(inputs, layers.Dense(len(LABELS))(pooled))
    linear.save(model_dir / "linear.keras")
    (model_dir / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return model_dir


@pytest.fixture(scope="module")
def reference(run_dir):
    """The in-memory Keras models the export must reproduce."""
    return {
        name: keras.saving.load_model(run_dir / name)
        for name in (artifacts.ENCODER_FILE, "linear.keras")
    }


@pytest.fixture(scope="module")
def export_dir(run_dir, tmp_path_factory):
    """An export of the run with the linear classifier, top 2 labels."""
    export_dir = tmp_path_factory.mktemp("export")
    path = export(
        str(run_dir),
        str(export_dir),
        classifier=str(run_dir / "linear.keras"),
        labels=str(run_dir / "labels.txt"),
        top_k=2,
    )
    assert path == str(export_dir / "1")
    return export_dir


@pytest.fixture(scope="module")
def exported(export_dir):
    return tf.saved_model.load(str(export_dir / "1"))


def expected_features(reference, images):
    encoder = reference[artifacts.ENCODER_FILE]
    return np.concatenate(
        [encoder(eval_patches(image[None], **GEOMETRY)) for image in images]
    )


def test_embeddings_match_the_keras_encoder(exported, reference):
    # Two sizes in one request: each image is preprocessed on its own.
    images = [*pictures(2), *pictures(1, size=(33, 50), seed=1)]
    features = expected_features(reference, images)
    assert features.shape == (3, GRID, GRID, 16)
    out = exported.signatures["serving_default"](
        image_bytes=tf.constant([png(image) for image in images])
    )
    np.testing.assert_allclose(out["features"], features, **CLOSE)
    np.testing.assert_allclose(
        out["embedding"], features.mean(axis=(1, 2)), **CLOSE
    )
    out = exported.signatures["serve_images"](
        images=tf.constant(np.stack(images[:2]))
    )
    np.testing.assert_allclose(out["features"], features[:2], **CLOSE)
    np.testing.assert_allclose(
        out["embedding"], features[:2].mean(axis=(1, 2)), **CLOSE
    )


def test_jpeg_bytes_equal_their_decoded_pixels(exported):
    jpeg = tf.io.encode_jpeg(pictures(1)[0]).numpy()
    from_bytes = exported.signatures["serving_default"](
        image_bytes=tf.constant([jpeg])
    )
    from_pixels = exported.signatures["serve_images"](
        images=tf.io.decode_jpeg(jpeg)[None]
    )
    np.testing.assert_allclose(
        from_bytes["features"], from_pixels["features"], **CLOSE
    )


def test_grey_and_alpha_become_rgb(exported):
    serve = exported.signatures["serve_images"]
    grey = pictures(2, channels=1)
    rgba = pictures(2, channels=4, seed=2)
    for image, rgb in (
        (grey, np.repeat(grey, 3, axis=-1)),
        (rgba, rgba[..., :3]),
    ):
        expected = serve(images=tf.constant(rgb))["features"]
        np.testing.assert_allclose(
            serve(images=tf.constant(image))["features"], expected, **CLOSE
        )
        out = exported.signatures["serving_default"](
            image_bytes=tf.constant([png(i) for i in image])
        )
        np.testing.assert_allclose(out["features"], expected, **CLOSE)


def check_classify(out, logits, labels, k):
    probabilities = tf.nn.softmax(logits).numpy()
    np.testing.assert_allclose(out["probabilities"], probabilities, **CLOSE)
    np.testing.assert_allclose(
        np.sum(out["probabilities"], axis=-1), 1.0, rtol=1e-6
    )
    order = np.argsort(-probabilities, axis=-1)[:, :k]
    np.testing.assert_array_equal(out["top_k_indices"], order)
    np.testing.assert_allclose(
        out["top_k_probabilities"],
        np.take_along_axis(probabilities, order, axis=-1),
        **CLOSE,
    )
    np.testing.assert_array_equal(
        np.asarray(out["top_k_labels"]).astype(str), np.array(labels)[order]
    )


def test_classify_linear(exported, reference):
    images = pictures(4, seed=3)
    out = exported.signatures["classify"](
        image_bytes=tf.constant([png(image) for image in images])
    )
    logits = reference["linear.keras"](eval_patches(images, **GEOMETRY))
    check_classify(out, logits, LABELS, k=2)


def test_classify_fine_tuned_images(run_dir, tmp_path):
    fine_tuned = keras.Sequential(
        [
            keras.Input((24, 24, 3)),
            load_encoder(str(run_dir), kind="image"),
            layers.Dense(4),
        ]
    )
    fine_tuned.save(tmp_path / "fine_tuned.keras")
    export_dir = tmp_path / "export"
    (export_dir / "3").mkdir(parents=True)
    (export_dir / "notes").mkdir()
    path = export(
        str(run_dir),
        str(export_dir),
        classifier=str(tmp_path / "fine_tuned.keras"),
        top_k=3,
    )
    assert path == str(export_dir / "4")
    assert sorted(os.listdir(export_dir)) == ["3", "4", "notes"]
    images = pictures(3, seed=4)
    out = tf.saved_model.load(path).signatures["classify"](
        image_bytes=tf.constant([png(image) for image in images])
    )
    logits = fine_tuned(eval_image(images, image_size=24))
    check_classify(out, logits, [str(i) for i in range(4)], k=3)
    with pytest.raises(ExportArgumentError, match="--version.*exists"):
        export(str(run_dir), str(export_dir), version=4)


def test_corrupt_images_fail(exported):
    jpeg = tf.io.encode_jpeg(pictures(1)[0]).numpy()
    for signature in ("serving_default", "classify"):
        serve = exported.signatures[signature]
        with pytest.raises(tf.errors.InvalidArgumentError, match="JPEG"):
            serve(image_bytes=tf.constant([jpeg, jpeg[: len(jpeg) // 2]]))
        with pytest.raises(
            tf.errors.InvalidArgumentError, match="Unknown image file format"
        ):
            serve(image_bytes=tf.constant([b"not an image"]))
        with pytest.raises(tf.errors.InvalidArgumentError, match="empty"):
            serve(image_bytes=tf.constant([b""]))


def test_wrong_dtype_or_rank_fails(exported):
    errors = (tf.errors.InvalidArgumentError, TypeError, ValueError)
    serve = exported.signatures["serve_images"]
    with pytest.raises(errors, match="uint8"):
        serve(images=tf.zeros((1, 32, 32, 3), tf.float32))
    with pytest.raises(errors, match=r"must be uint8 \[B, h, w, C\]"):
        serve(images=tf.zeros((32, 32, 3), tf.uint8))
    with pytest.raises(errors, match="1 to 4 channels"):
        serve(images=tf.zeros((1, 32, 32, 5), tf.uint8))
    with pytest.raises(errors):
        exported.signatures["serving_default"](
            image_bytes=tf.zeros((1,), tf.uint8)
        )
    with pytest.raises(errors):
        exported.signatures["serving_default"](
            image_bytes=tf.constant(png(pictures(1)[0]))
        )
    with pytest.raises(errors):
        exported.serve_images(tf.zeros((1, 32, 32, 3), tf.float32))


@pytest.fixture(scope="module")
def bad_files(run_dir, tmp_path_factory):
    """An empty model dir, a short label list and misfit classifiers."""
    directory = tmp_path_factory.mktemp("bad")
    (directory / "empty").mkdir()
    (directory / "two.txt").write_text("a\nb\n")
    for name, shape in (("small_grid", (5, 5, 8, 8, 3)), ("vectors", (16,))):
        inputs = keras.Input(shape)
        flat = layers.Flatten()(inputs)
        model = keras.Model(inputs, layers.Dense(3)(flat))
        model.save(directory / f"{name}.keras")
    for name in ("labels.txt", "linear.keras"):
        shutil.copy(run_dir / name, directory)
    return directory


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(model_dir="empty"), "--model_dir: .* has no encoder.keras"),
        (dict(labels="labels.txt"), "--labels: .*needs --classifier"),
        (dict(classifier="missing.keras"), "--classifier: no such file"),
        (dict(classifier="linear.keras", top_k=0), "--top_k: must be >= 1"),
        (dict(classifier="linear.keras", top_k=4), "--top_k: 4 exceeds"),
        (
            dict(classifier="linear.keras", labels="two.txt"),
            "--labels: has 2 labels but the classifier has 3",
        ),
        (dict(classifier="small_grid.keras"), "--classifier: takes patch"),
        (dict(classifier="vectors.keras"), "--classifier: must take"),
        (dict(version=0), "--version: must be >= 1"),
    ],
)
def test_bad_arguments_name_their_flag(
    run_dir, bad_files, tmp_path, arguments, message
):
    arguments = dict(arguments)
    model_dir = run_dir
    if "model_dir" in arguments:
        model_dir = bad_files / arguments.pop("model_dir")
    for name in ("labels", "classifier"):
        if name in arguments:
            arguments[name] = str(bad_files / arguments[name])
    with pytest.raises(ExportArgumentError, match=message):
        export(str(model_dir), str(tmp_path / "export"), **arguments)
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize(
    "where", ["run", "export", "version", "encoder.keras", "backbone.keras"]
)
def test_load_encoder_kinds_and_paths(run_dir, export_dir, reference, where):
    path = {
        "run": run_dir,
        "export": export_dir,
        "version": export_dir / "1",
    }.get(where, run_dir / where)
    images = pictures(2, size=(28, 28)).astype("float32") / 127.5 - 1.0
    backbone = keras.saving.load_model(run_dir / artifacts.BACKBONE_FILE)
    feature_map = backbone(images)
    np.testing.assert_allclose(
        load_encoder(str(path), kind="features")(images), feature_map, **CLOSE
    )
    np.testing.assert_allclose(
        load_encoder(str(path))(images),
        np.mean(feature_map, axis=(1, 2)),
        **CLOSE,
    )
    grids = eval_patches(pictures(2), **GEOMETRY)
    np.testing.assert_allclose(
        load_encoder(str(path), kind="patches")(grids),
        reference[artifacts.ENCODER_FILE](grids),
        **CLOSE,
    )


def test_load_encoder_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="kind must be one of"):
        load_encoder(str(tmp_path), kind="pixels")
    with pytest.raises(FileNotFoundError, match="neither a model directory"):
        load_encoder(str(tmp_path))


@pytest.mark.parametrize("trainable", [False, True])
def test_transfer_with_fit(run_dir, trainable):
    keras.utils.set_random_seed(1)
    encoder = load_encoder(str(run_dir), kind="image", trainable=trainable)
    head = layers.Dense(len(LABELS))
    model = keras.Sequential([keras.Input((28, 28, 3)), encoder, head])
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    assert bool(encoder.trainable_weights) == trainable
    before = [w.numpy() for w in encoder.weights + head.weights]
    images = pictures(8, size=(28, 28)).astype("float32") / 127.5 - 1.0
    history = model.fit(
        images, np.arange(8) % 3, batch_size=4, epochs=2, verbose=0
    )
    assert np.all(np.isfinite(history.history["loss"]))
    after = [w.numpy() for w in encoder.weights + head.weights]
    changed = [not np.array_equal(b, a) for b, a in zip(before, after)]
    assert all(changed[-2:])  # The head's kernel and bias.
    encoder_changed = changed[: len(encoder.weights)]
    assert any(encoder_changed) == trainable


LOAD_AND_RUN = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf

    version_dir, inputs, outputs = sys.argv[1:]
    images = np.load(inputs)
    image_bytes = tf.constant([tf.io.encode_png(i).numpy() for i in images])
    signatures = tf.saved_model.load(version_dir).signatures
    results = {}
    for name, argument in (
        ("serving_default", dict(image_bytes=image_bytes)),
        ("serve_images", dict(images=tf.constant(images))),
        ("classify", dict(image_bytes=image_bytes)),
    ):
        for key, value in signatures[name](**argument).items():
            value = value.numpy()
            if value.dtype == object:
                value = value.astype(str)
            results[f"{name}/{key}"] = value
    np.savez(outputs, **results)
    """
)


@pytest.mark.slow
def test_command_line_export_in_fresh_processes(run_dir, reference, tmp_path):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")

    def run(*command):
        return subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=300
        )

    export_dir = tmp_path / "export"
    (tmp_path / "empty").mkdir()
    bad = run(
        sys.executable,
        "-m",
        "cpc_tf.export",
        f"--model_dir={tmp_path / 'empty'}",
        f"--export_dir={export_dir}",
    )
    assert bad.returncode != 0
    assert "--model_dir" in bad.stderr and "encoder.keras" in bad.stderr
    assert not export_dir.exists()

    done = run(
        sys.executable,
        "-m",
        "cpc_tf.export",
        f"--model_dir={run_dir}",
        f"--export_dir={export_dir}",
        f"--classifier={run_dir / 'linear.keras'}",
        f"--labels={run_dir / 'labels.txt'}",
        "--top_k=2",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    version_dir = export_dir / "1"
    for name in ("saved_model.pb", "encoder.keras", "backbone.keras"):
        assert (version_dir / name).exists()

    images = pictures(3, seed=5)
    np.save(tmp_path / "images.npy", images)
    loaded = run(
        sys.executable,
        "-c",
        LOAD_AND_RUN,
        str(version_dir),
        str(tmp_path / "images.npy"),
        str(tmp_path / "outputs.npz"),
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    outputs = np.load(tmp_path / "outputs.npz")
    features = expected_features(reference, images)
    for name in ("serving_default", "serve_images"):
        np.testing.assert_allclose(
            outputs[f"{name}/features"], features, **CLOSE
        )
        np.testing.assert_allclose(
            outputs[f"{name}/embedding"], features.mean(axis=(1, 2)), **CLOSE
        )
    logits = reference["linear.keras"](eval_patches(images, **GEOMETRY))
    classify = {
        key.split("/")[1]: value
        for key, value in outputs.items()
        if key.startswith("classify/")
    }
    check_classify(classify, logits, LABELS, k=2)

    cli = shutil.which(
        "saved_model_cli", path=os.path.dirname(sys.executable)
    ) or shutil.which("saved_model_cli")
    if cli is None:
        pytest.skip("saved_model_cli is not installed with tensorflow")
    shown = run(cli, "show", "--all", "--dir", str(version_dir))
    assert shown.returncode == 0, shown.stderr[-3000:]
    for name in ("serving_default", "serve_images", "classify", "image_bytes"):
        assert f"'{name}'" in shown.stdout
