"""The report's figures: accuracy against label fraction, and the k-NN
monitor during pretraining."""

from cpc_tf.reporting.planning import METHODS


def plot(cells, fractions, path, title):
    """Top-1 mean against label fraction, error bars of one std."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8.5, 4.2))
    for method, label in METHODS.items():
        points = sorted(
            (fraction, cell["mean"], cell["std"])
            for (name, fraction), cell in cells.items()
            if name == method
        )
        if points:
            x, y, error = zip(*points)
            axes.errorbar(x, y, yerr=error, marker="o", capsize=3, label=label)
    axes.set_xscale("log")
    axes.set_xticks(fractions, [f"{f:g}%" for f in fractions])
    axes.set_xlabel("labelled training images")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    if cells:
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def plot_knn(history, path, title):
    """The k-NN monitor's top-1 (%) against the pretraining step."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(5.5, 3.5))
    steps, values = zip(*history)
    axes.plot(steps, [100 * v for v in values], marker="o")
    axes.set_xlabel("pretraining step")
    axes.set_ylabel("k-NN top-1 (%)")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
