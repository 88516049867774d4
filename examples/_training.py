"""What the two training examples share about how they train and report it."""

import sys


def progress(args):
    """Keras `verbose`: progress bars in a terminal, a line an epoch in a log."""
    if args.quiet:
        return 0
    return 1 if sys.stdout.isatty() else 2


def epochs(count):
    return f"{count} epoch" if count == 1 else f"{count} epochs"


def describe_training(ran, best, args):
    """One line: how many epochs ran, why it stopped, which weights were kept."""
    if best is None:
        return f"{epochs(ran)} (fixed by --epochs)"
    if ran < args.max_epochs:
        why = (
            f"stopped early: no improvement for {args.patience} epoch"
            f"{'s' if args.patience != 1 else ''} after epoch {best}"
        )
    else:
        why = f"reached the most epochs, {args.max_epochs}"
    return f"{epochs(ran)} ({why}); kept the weights of epoch {best}"


def epochs_of(steps, per_pass):
    """`(epochs, steps_per_epoch)` for `steps` steps, in epochs of at most a
    pass over the data (`per_pass` batches) and as even as they can be; their
    product is `steps` rounded up to a multiple of the epochs."""
    epochs = max(1, -(-steps // max(per_pass, 1)))
    return epochs, -(-steps // epochs)
