"""`python -m cpc_tf.export --model_dir=RUN --export_dir=DIR`: a run's
encoder (and classifier) as a TF Serving SavedModel.

The library is `cpc_tf.serving.export`; `--helpfull` lists its flags.
"""

from absl import app, flags

from cpc_tf.protocols import runtime
from cpc_tf.serving import export

if __name__ == "__main__":
    export.define_flags(flags.FLAGS)
    app.run(
        runtime.entry_point(
            lambda argv: print(
                f"Exported to {export.run_from_flags(flags.FLAGS, argv)}"
            )
        )
    )
