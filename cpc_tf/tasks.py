"""Training tasks for the shared trainer: the CPC objective."""

from cpc_tf import distribute, trainer


class CPCTask(trainer.Task):
    """The CPC objective summed over directions; `negatives` local/global."""

    def __init__(self, model, optimizer, negatives="local"):
        self.model = model
        self.optimizer = optimizer
        self.negatives = negatives
        # With global negatives every replica computes the global loss.
        self.global_loss = negatives == "global"

    def compute(self, batch, training):
        patches = batch[0] if isinstance(batch, (tuple, list)) else batch
        gather = distribute.gather_batch if self.global_loss else None
        latents = self.model.encoder(patches, training=training)
        terms = self.model.cpc_terms(latents, gather=gather)
        return self.model.total_loss(terms), terms

    def optimizer_groups(self):
        return [
            trainer.OptimizerGroup(
                self.optimizer, self.model.trainable_variables
            )
        ]
