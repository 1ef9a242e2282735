import numpy as np

from cpc_tf.config import DataConfig
from cpc_tf.evaluation import feature_cache


def test_the_key_names_encoder_source_and_geometry(tmp_path):
    data = DataConfig()
    path = feature_cache.cache_path(str(tmp_path), "enc", "mnist5k", data)
    assert path.startswith(str(tmp_path / feature_cache.CACHE_DIR))
    others = {
        feature_cache.cache_path(str(tmp_path), "other", "mnist5k", data),
        feature_cache.cache_path(str(tmp_path), "enc", "cifar10", data),
        feature_cache.cache_path(
            str(tmp_path), "enc", "mnist5k", DataConfig(patch_size=44)
        ),
    }
    assert path not in others and len(others) == 3


def test_a_written_cache_is_read_back_and_leaves_no_partial_file(
    tmp_path, monkeypatch
):
    path = str(tmp_path / "features" / "key.npz")
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    labels = np.array([0, 1, 1, 0])
    monkeypatch.setattr(
        feature_cache.features, "extract", lambda *args: (values, labels)
    )
    monkeypatch.setattr(
        feature_cache.sources, "source_labels", lambda *a, **k: labels
    )
    eval_fn = lambda spec, ids: None  # noqa: E731
    data = DataConfig()
    first = feature_cache.source_features(
        None, None, eval_fn, "spec", data, path, write=True
    )
    assert [p.name for p in (tmp_path / "features").iterdir()] == ["key.npz"]

    def no_embedding(*args):
        raise AssertionError("embedded again instead of reading the cache")

    monkeypatch.setattr(feature_cache.features, "extract", no_embedding)
    second = feature_cache.source_features(
        None, None, eval_fn, "spec", data, path, write=True
    )
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    rows = feature_cache.select(second, np.array([3, 1]))
    np.testing.assert_array_equal(rows[0], values[[3, 1]])


def test_a_damaged_cache_is_set_aside_and_embedded_again(tmp_path, monkeypatch):
    path = tmp_path / "features" / "key.npz"
    path.parent.mkdir()
    path.write_bytes(b"PK\x03\x04 half a zip")
    values = np.ones((2, 3), np.float32)
    labels = np.array([0, 1])
    monkeypatch.setattr(
        feature_cache.features, "extract", lambda *args: (values, labels)
    )
    monkeypatch.setattr(
        feature_cache.sources, "source_labels", lambda *a, **k: labels
    )
    got = feature_cache.source_features(
        None,
        None,
        lambda spec, ids: None,
        "spec",
        DataConfig(),
        str(path),
        write=True,
    )
    np.testing.assert_array_equal(got[0], values)
    damaged = tmp_path / "features" / "key.npz.damaged"
    assert damaged.read_bytes() == b"PK\x03\x04 half a zip"
    assert feature_cache._read(str(path))[1].tolist() == [0, 1]
