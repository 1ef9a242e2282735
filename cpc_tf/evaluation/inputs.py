"""How a protocol reads its data: patch grids or whole images.

`Inputs` makes the `dataset_fn`s of training (shuffled, augmented,
repeated) and evaluation (one pass, no augmentation) from `data.pipeline`;
`test_fn` and `validation_fn` point them at the parts of a `splits.Split`.
"""

import dataclasses

from cpc_tf.config import HOLDOUT, DataConfig, flag_error
from cpc_tf.data import pipeline, sources
from cpc_tf.training.builders import augment_config


@dataclasses.dataclass(frozen=True)
class Inputs:
    """How a protocol reads data: patch grids or whole images.

    Attributes:
        data: the `DataConfig` (patch geometry, or `image_size` for whole
            images).
        patches: True for CPC patch grids `[B, g, g, p, p, 3]`, False for
            whole images `[B, S, S, 3]`, S = `image_size`.
        augment: augment the training data.
    """

    data: DataConfig
    patches: bool
    augment: bool = True

    @property
    def shape(self):
        """One example's shape."""
        data = self.data
        if self.patches:
            grid, patch = data.grid_size, data.patch_size
            return (grid, grid, patch, patch, 3)
        return (data.image_size, data.image_size, 3)

    def _dataset(self, spec, batch_size, training, **kwargs):
        data = self.data
        kwargs.update(
            batch_size=batch_size,
            training=training,
            image_size=data.image_size,
            augment=augment_config(data) if self.augment else None,
            data_dir=data.data_dir or None,
        )
        if self.patches:
            dataset, _ = pipeline.pretrain_dataset(
                spec,
                crop_size=data.crop_size,
                patch_size=data.patch_size,
                patch_stride=data.patch_stride,
                **kwargs,
            )
        else:
            dataset, _ = pipeline.image_dataset(
                spec,
                crop_min_area=data.crop_min_area,
                flip=data.random_flip,
                **kwargs,
            )
        return dataset

    def train_fn(self, global_batch, ids, seed, steps_done):
        """`dataset_fn` of shuffled, augmented, repeated training batches.

        Args:
            global_batch: batch size over all replicas.
            ids: indices into the training source, or None for all.
            seed: run seed.
            steps_done: `() -> int`, the restored step (reseeds a resumed
                run).
        """

        def dataset_fn(input_context):
            return self._dataset(
                self.data.train_data,
                input_context.get_per_replica_batch_size(global_batch),
                True,
                seed=seed + 1009 * steps_done(),
                input_context=input_context,
                label_subset=ids,
                shuffle_buffer=self.data.shuffle_buffer,
            )

        return dataset_fn

    def view_fn(self, global_batch, ids, seed):
        """`dataset_fn` of one pass of augmented training views (random
        crop and augmentation as in training; a partial last batch is
        dropped)."""

        def dataset_fn(input_context):
            return self._dataset(
                self.data.train_data,
                input_context.get_per_replica_batch_size(global_batch),
                True,
                seed=seed,
                input_context=input_context,
                label_subset=ids,
                shuffle_buffer=self.data.shuffle_buffer,
                repeat=False,
            )

        return dataset_fn

    def eval_fn(self, spec, global_batch, ids=None):
        """`dataset_fn` of one pass of `spec` (or its `ids`), no augment."""

        def dataset_fn(input_context):
            return self._dataset(
                spec,
                input_context.get_per_replica_batch_size(global_batch),
                False,
                input_context=input_context,
                label_subset=ids,
                repeat=False,
            )

        return dataset_fn


def test_fn(inputs, data, split, global_batch):
    """One pass over the test images: `--eval_data`, or the `--holdout`
    images of `--train_data` with `--eval_data=holdout` (for sources that
    have no test split, such as the CIFAR-10 TFRecords here)."""
    if data.eval_data == HOLDOUT:
        return inputs.eval_fn(data.train_data, global_batch, split.test_ids)
    return inputs.eval_fn(data.eval_data, global_batch)


def eval_batch_size(config):
    """The global batch of evaluation passes: `--eval_batch_size`, else
    the training batch."""
    return config.options.eval_batch_size or config.run.batch_size


def validation_fn(inputs, data, split, global_batch):
    """One pass over the validation images, or None without any."""
    if split.val_ids is None:
        return None
    return inputs.eval_fn(data.train_data, global_batch, split.val_ids)


def num_classes(data):
    """Classes of the training source; the evaluation source must agree."""
    counts = {"eval_data": None}
    holdout = data.eval_data == HOLDOUT
    for flag in ("train_data",) if holdout else ("train_data", "eval_data"):
        try:
            _, info = sources.load_source(
                getattr(data, flag), data_dir=data.data_dir or None
            )
        except sources.SourceError as error:
            flag_error(flag, str(error))
        counts[flag] = info.num_classes
    if counts["eval_data"] not in (None, counts["train_data"]):
        flag_error(
            "eval_data",
            f"{counts['eval_data']} classes, but --train_data has "
            f"{counts['train_data']}.",
        )
    return counts["train_data"]
