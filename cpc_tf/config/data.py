"""The data group: sources, splits, patch geometry and augmentation."""

import dataclasses

from cpc_tf.config.base import check_probability, config_field, flag_error

# The RandAugment operations of `data.augment` (which imports the names
# from here, so that the flag is checked before any data code runs).
RANDAUGMENT_OPS = (
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotate",
    "auto_contrast",
    "invert",
    "equalize",
    "solarize",
    "posterize",
    "contrast",
    "color",
    "brightness",
    "sharpness",
    "cutout",
)

LABEL_FRACTIONS = (1, 2, 5, 10, 20, 50, 100)
# The `--eval_data` that tests on the `--holdout` images.
HOLDOUT = "holdout"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Data sources, patch geometry and augmentation (appendix A)."""

    train_data: str = config_field(
        "mnist5k:train",
        "Training source: mnist5k:SPLIT, tfds:NAME[/CONFIG]:SPLIT, "
        "folder:DIR or tfrecord:GLOB.",
    )
    eval_data: str = config_field(
        "mnist5k:test",
        "Evaluation source (same forms), or 'holdout': test on the --holdout "
        "images of --train_data (for data without a test split).",
    )
    data_dir: str = config_field("", "TFDS data directory ('' = TFDS default).")
    image_size: int = config_field(
        300, "Images are first resized to this square."
    )
    crop_size: int = config_field(
        260, "Random (train) / center (eval) crop size."
    )
    patch_size: int = config_field(80, "Side of each square patch.")
    patch_stride: int = config_field(36, "Stride between patches.")
    label_fraction: float = config_field(
        100.0, "Percent of labels used by evaluation (1, 2, 5, ... 100)."
    )
    holdout: float = config_field(
        0.0,
        "Images held out of --train_data, a count (>= 1) or a fraction "
        "(< 1); pretraining never sees them. They are the test set with "
        "--eval_data=holdout, else the validation set. 0 = none.",
    )
    holdout_seed: int = config_field(
        0,
        "Seed of the --holdout and --validation splits; unlike --seed it "
        "stays fixed, so every seed and every stage hold out the same images.",
    )
    validation: float = config_field(
        0.0,
        "With --eval_data=holdout: validation images for model selection, "
        "a count or fraction of the training images left after --holdout "
        "(pretraining may see them, like the paper's). 0 = none.",
    )
    subset_dir: str = config_field(
        "", "Where label subsets are written/read ('' = model_dir)."
    )
    shuffle_buffer: int = config_field(10000, "Shuffle buffer (examples).")
    crop_min_area: float = config_field(
        0.08,
        "Whole-image training (supervised, fine-tuning): the smallest area "
        "fraction of the Inception random-sized crop (Inception's 0.08).",
    )
    random_flip: bool = config_field(
        True,
        "Whole-image training: random left-right flips (off for digits).",
    )
    randaugment: bool = config_field(
        True, "Step 1: two AutoAugment/RandAugment ops per patch."
    )
    randaugment_num_ops: int = config_field(2, "Step 1: ops drawn per patch.")
    randaugment_magnitude: float = config_field(
        9.0, "Step 1: op magnitude on AutoAugment's 0-10 scale (RandAugment M)."
    )
    randaugment_ops: tuple = config_field(
        RANDAUGMENT_OPS,
        "Step 1: the operations drawn from (default: AutoAugment's list).",
    )
    elastic_shear_prob: float = config_field(
        0.2, "Step 2: probability of elastic deformation + shear."
    )
    color_histogram_prob: float = config_field(
        0.2, "Step 2: probability of colour-histogram augmentation."
    )
    color_jitter_prob: float = config_field(
        0.8, "Step 3: probability of Inception colour augmentation."
    )
    grayscale_prob: float = config_field(
        0.25, "Step 4: probability of greyscale."
    )

    def __post_init__(self):
        for name in ("image_size", "crop_size", "patch_size", "patch_stride"):
            if getattr(self, name) < 1:
                flag_error(name, f"must be >= 1, got {getattr(self, name)}.")
        if self.crop_size > self.image_size:
            flag_error(
                "crop_size",
                f"{self.crop_size} is larger than --image_size "
                f"{self.image_size}.",
            )
        span = self.crop_size - self.patch_size
        if span < 0 or span % self.patch_stride:
            flag_error(
                "patch_stride",
                f"patches of {self.patch_size} at stride {self.patch_stride} "
                f"do not tile a {self.crop_size} crop exactly "
                "((crop_size - patch_size) must be a non-negative multiple "
                "of patch_stride).",
            )
        if self.label_fraction not in LABEL_FRACTIONS:
            flag_error(
                "label_fraction",
                f"expected one of {LABEL_FRACTIONS}, got "
                f"{self.label_fraction}.",
            )
        for name in ("holdout", "validation"):
            if getattr(self, name) < 0:
                flag_error(name, f"must be >= 0, got {getattr(self, name)}.")
        if self.validation and self.eval_data != "holdout":
            flag_error(
                "validation",
                "is for --eval_data=holdout; with a separate --eval_data "
                "the --holdout images are the validation set.",
            )
        if self.eval_data == "holdout" and not self.holdout:
            flag_error(
                "eval_data",
                "'holdout' tests on the --holdout images; set --holdout.",
            )
        if not 0.0 < self.crop_min_area <= 1.0:
            flag_error(
                "crop_min_area", f"must be in (0, 1], got {self.crop_min_area}."
            )
        for name in (
            "elastic_shear_prob",
            "color_histogram_prob",
            "color_jitter_prob",
            "grayscale_prob",
        ):
            check_probability(self, name)
        unknown = set(self.randaugment_ops) - set(RANDAUGMENT_OPS)
        if unknown or not self.randaugment_ops:
            flag_error(
                "randaugment_ops",
                f"unknown {sorted(unknown) or 'empty list'}; choose from "
                f"{','.join(RANDAUGMENT_OPS)}.",
            )
        if not 0.0 <= self.randaugment_magnitude <= 10.0:
            flag_error(
                "randaugment_magnitude",
                f"must be in [0, 10], got {self.randaugment_magnitude}.",
            )

    @property
    def grid_size(self):
        """Patches per side of the grid."""
        return (self.crop_size - self.patch_size) // self.patch_stride + 1
