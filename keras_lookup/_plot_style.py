"""One colour per strategy in every plot the benchmarks draw.

The lookup plots, the training-step plot and the scale plot share these, so
a colour means the same thing in each: green is our gather (and the lazy
optimizers, which train it), orange our matmul, black `"auto"`, blue and
purple Keras's own layers (dashed), and the row-wise optimizers brown and
pink. bfloat16 tables keep their optimizer's colour, dotted.
"""

COLORS = {
    # keras_lookup.bench columns
    "auto": "#000000",
    "gather": "#2ca02c",
    "matmul": "#ff7f0e",
    "keras Embedding": "#1f77b4",
    "keras Dense": "#9467bd",
    # benchmarks/train_step.py
    "ours": "#2ca02c",
    "keras": "#1f77b4",
    "keras+lazy": "#17becf",
    # benchmarks/train_step.py --scale
    "lazy_adam": "#2ca02c",
    "rowwise_adagrad": "#8c564b",
    "rowwise_adam": "#e377c2",
    "keras_adam": "#1f77b4",
}
FONT_SIZE = 11


def style(name):
    """`plot` keyword arguments for the column or system `name`."""
    base = name.removesuffix("_bf16")
    keras_own = name.startswith("keras")
    return {
        "color": COLORS.get(base, "#7f7f7f"),
        "linestyle": ":" if name.endswith("_bf16") else "--" if keras_own else "-",
        "linewidth": 2.6 if name == "auto" else 1.6,
    }


def use_style(matplotlib):
    """Text sizes that stay legible when a page shrinks the figure."""
    matplotlib.rcParams.update(
        {
            "font.size": FONT_SIZE,
            "axes.titlesize": FONT_SIZE + 1,
            "legend.fontsize": FONT_SIZE - 1,
        }
    )
