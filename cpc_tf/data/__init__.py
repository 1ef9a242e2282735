"""The data layer: sources, label subsets, patch grids, augmentation and
input pipelines."""

from cpc_tf.data.augment import (
    RANDAUGMENT_OPS,
    AugmentConfig,
    augment_images,
    augment_patches,
    inception_crop,
    sample_randaugment_ops,
)
from cpc_tf.data.patches import extract_patches, grid_size
from cpc_tf.data.pipeline import (
    eval_image,
    eval_patches,
    image_dataset,
    pretrain_dataset,
)
from cpc_tf.data.sources import (
    SkipCounter,
    SourceError,
    SourceInfo,
    load_source,
    source_labels,
)
from cpc_tf.data.subsets import (
    apply_subset,
    holdout_split,
    label_subset_ids,
    load_subset,
    save_subset,
)

__all__ = [
    "RANDAUGMENT_OPS",
    "AugmentConfig",
    "SkipCounter",
    "SourceError",
    "SourceInfo",
    "apply_subset",
    "augment_images",
    "augment_patches",
    "eval_image",
    "eval_patches",
    "extract_patches",
    "grid_size",
    "holdout_split",
    "image_dataset",
    "inception_crop",
    "label_subset_ids",
    "load_source",
    "load_subset",
    "pretrain_dataset",
    "sample_randaugment_ops",
    "save_subset",
    "source_labels",
]
