"""The CPC v2 model: patch encoder, context networks, predictors, InfoNCE.

`CPC(encoder)(patches)` maps `[B, gh, gw, ph, pw, C]` patch grids to a dict
of float32 scalars: `loss_<direction>` (InfoNCE summed over the predicted
offsets, as in the appendix pseudocode) and `accuracy_<direction>` (top-1
accuracy of the positive, averaged over offsets). Training sums the losses
over directions (`compute_loss`), so `model.compile(optimizer)` +
`model.fit(patches)` trains it with Keras's own step on any backend. The
paper's step (the global norm of the gradient summed over replicas
clipped, the Polyak average) is the trainer's:
`cpc_tf.training.keras_fit.CPCPretrainer(model)` runs it under `fit`,
exactly as `cpc_tf.pretrain` does. `model.encoder` is the patch encoder
alone.

Each direction has its own head (context network, target projection and one
predictor per offset) unless `share_context=True`, in which case one head
serves all directions. A direction is the "down" computation on the latent
grid rotated by a multiple of 90 degrees (`context.rotate_to_down`).
"""

import keras
from keras import layers, ops

from cpc_tf.models import losses
from cpc_tf.models.context import DIRECTIONS, PixelCNN, rotate_to_down
from cpc_tf.models.encoders import PatchEncoder


def validate_cpc_args(directions, steps_to_ignore, steps_to_predict, grid):
    """Raises ValueError, naming the argument, for a CPC setting that makes
    no sense on a `grid = (gh, gw)` latent grid (gw or gh may be None)."""
    if not directions:
        raise ValueError("directions must name at least one direction.")
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown:
        raise ValueError(
            f"directions: unknown {unknown}; expected some of {DIRECTIONS}."
        )
    if len(set(directions)) != len(directions):
        raise ValueError(f"directions has duplicates: {list(directions)}.")
    if not 0 <= steps_to_ignore < steps_to_predict:
        raise ValueError(
            "Need 0 <= steps_to_ignore < steps_to_predict; got "
            f"steps_to_ignore={steps_to_ignore}, "
            f"steps_to_predict={steps_to_predict}."
        )
    for direction in directions:
        axis = 0 if direction in ("down", "up") else 1
        length = grid[axis]
        if length is not None and steps_to_predict >= length:
            raise ValueError(
                f"steps_to_predict={steps_to_predict} needs a grid longer "
                f"than {steps_to_predict} along direction {direction!r}; "
                f"the grid is {grid[0]}x{grid[1]} (patch grid too small)."
            )


@keras.saving.register_keras_serializable(package="cpc_tf")
class CPC(keras.Model):
    """CPC v2 with an encoder, per-direction context networks and InfoNCE.

    Args:
        encoder: a `PatchEncoder`.
        directions: some of "down", "up", "left", "right" (v2: all four).
        steps_to_ignore: offsets `1..steps_to_ignore` are not predicted.
        steps_to_predict: the largest offset predicted.
        target_dim: width of targets and predictions (64).
        emb_scale: scale of the predictions (0.1).
        share_context: one head (context, targets, predictors) for all
            directions instead of one each.
        context_blocks: residual blocks of each PixelCNN (5).
        context_hidden: hidden width of each PixelCNN (256).
        loss_chunk_size: prediction rows per chunk of the InfoNCE logits
            (None: one chunk).
    """

    def __init__(
        self,
        encoder,
        directions=DIRECTIONS,
        steps_to_ignore=2,
        steps_to_predict=3,
        target_dim=64,
        emb_scale=0.1,
        share_context=False,
        context_blocks=5,
        context_hidden=256,
        loss_chunk_size=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        directions = tuple(directions)
        validate_cpc_args(
            directions, steps_to_ignore, steps_to_predict, (None, None)
        )
        self.encoder = encoder
        self.directions = directions
        self.steps_to_ignore = steps_to_ignore
        self.steps_to_predict = steps_to_predict
        self.target_dim = target_dim
        self.emb_scale = emb_scale
        self.share_context = share_context
        self.context_blocks = context_blocks
        self.context_hidden = context_hidden
        self.loss_chunk_size = loss_chunk_size
        self.offsets = tuple(range(steps_to_ignore + 1, steps_to_predict + 1))
        head_names = ("shared",) if share_context else directions
        self.contexts = [
            PixelCNN(context_blocks, context_hidden, name=f"context_{h}")
            for h in head_names
        ]
        self.target_projections = [
            layers.Dense(target_dim, name=f"targets_{h}") for h in head_names
        ]
        self.predictors = [
            layers.Dense(target_dim, name=f"predict_{h}_offset{k}")
            for h in head_names
            for k in self.offsets
        ]
        self.trackers = {
            name: keras.metrics.Mean(name=name)
            for d in directions
            for name in (f"loss_{d}", f"accuracy_{d}")
        }

    def build(self, input_shape):
        self.encoder.build(input_shape)
        grid = tuple(input_shape[1:3])
        validate_cpc_args(
            self.directions, self.steps_to_ignore, self.steps_to_predict, grid
        )
        latent_shape = (None, None, None, self.encoder.output_dim)
        for context, targets in zip(self.contexts, self.target_projections):
            context.build(latent_shape)
            targets.build(latent_shape)
        for predictor in self.predictors:
            predictor.build(latent_shape)

    def _head(self, direction):
        index = 0 if self.share_context else self.directions.index(direction)
        per_head = len(self.offsets)
        return (
            self.contexts[index],
            self.target_projections[index],
            self.predictors[index * per_head : (index + 1) * per_head],
        )

    def cpc_outputs(self, latents):
        """Every direction's targets and per-offset predictions.

        Returns:
            `(targets, preds)`: a list of `[B, gh', gw', target_dim]` per
            direction (in the direction's rotated frame) and a list per
            direction of one prediction tensor per offset.
        """
        targets, preds = [], []
        for direction in self.directions:
            context_net, target_net, predictors = self._head(direction)
            grid = rotate_to_down(latents, direction)
            context = context_net(grid)
            targets.append(target_net(grid))
            preds.append([p(context) * self.emb_scale for p in predictors])
        return targets, preds

    def flat_outputs(self, targets, preds):
        """`cpc_outputs` as one list (targets first)."""
        return targets + [p for group in preds for p in group]

    def unflatten_outputs(self, flat):
        """The inverse of `flat_outputs`."""
        count, heads = len(self.offsets), len(self.directions)
        targets, rest = flat[:heads], flat[heads:]
        preds = [rest[i * count : (i + 1) * count] for i in range(heads)]
        return targets, preds

    def cpc_losses(self, targets, preds):
        """Per-direction InfoNCE loss and accuracy of `cpc_outputs`."""
        terms = {}
        for direction, direction_targets, direction_preds in zip(
            self.directions, targets, preds
        ):
            loss = ops.zeros((), "float32")
            accuracy = ops.zeros((), "float32")
            for offset, offset_preds in zip(self.offsets, direction_preds):
                term_loss, term_accuracy = losses.info_nce_terms(
                    offset_preds,
                    direction_targets,
                    offset,
                    chunk_size=self.loss_chunk_size,
                )
                loss += term_loss
                accuracy += term_accuracy
            terms[f"loss_{direction}"] = loss
            terms[f"accuracy_{direction}"] = accuracy / len(self.offsets)
        return terms

    def cpc_terms(self, latents, gather=None):
        """Per-direction loss and accuracy from `[B, gh, gw, D]` latents.

        `gather`, if given, maps a list of this replica's `[B, ...]`
        tensors to the whole global batch's (`distribute.gather_batch`):
        every replica's targets become negatives (`--negatives=global`).
        It is called once, with every direction's targets and predictions.
        """
        targets, preds = self.cpc_outputs(latents)
        if gather is not None:
            flat = gather(self.flat_outputs(targets, preds))
            targets, preds = self.unflatten_outputs(flat)
        return self.cpc_losses(targets, preds)

    def call(self, patches, training=None):
        return self.cpc_terms(self.encoder(patches, training=training))

    def total_loss(self, terms):
        """The training objective: the sum of the per-direction losses."""
        return sum(terms[f"loss_{d}"] for d in self.directions)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        return self.total_loss(y_pred) + sum(self.losses)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        for name, tracker in self.trackers.items():
            tracker.update_state(y_pred[name])
        return self.get_metrics_result()

    @property
    def metrics(self):
        return super().metrics + list(self.trackers.values())

    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            directions=list(self.directions),
            steps_to_ignore=self.steps_to_ignore,
            steps_to_predict=self.steps_to_predict,
            target_dim=self.target_dim,
            emb_scale=self.emb_scale,
            share_context=self.share_context,
            context_blocks=self.context_blocks,
            context_hidden=self.context_hidden,
            loss_chunk_size=self.loss_chunk_size,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(
            config["encoder"]
        )
        return cls(**config)


def build_cpc(
    backbone,
    patch_shape,
    grid,
    remat="none",
    **cpc_kwargs,
):
    """A built `CPC` model around `backbone` for `grid` patch grids.

    Args:
        backbone: e.g. `encoders.resnet_v2(...)`.
        patch_shape: `(ph, pw, C)`.
        grid: `(gh, gw)`.
        remat: the encoder's rematerialisation ("none", "blocks",
            "stages"; see `PatchEncoder`).
        **cpc_kwargs: `CPC` arguments.
    """
    model = CPC(
        PatchEncoder(backbone, remat=remat, name="encoder"), **cpc_kwargs
    )
    model.build((None,) + tuple(grid) + tuple(patch_shape))
    return model
