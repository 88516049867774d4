"""What the examples share on the command line and in their report.

The options every example takes (`--quick` / `--smoke`, `--seed`; the
training examples' `--quiet`, `--save-dir` / `--no-save`), how a mode fills
in the options left unset, the checks of numeric options, and the end-of-run
lines that say where a model was saved.
"""

import os


def add_modes(parser, quick_help, smoke_help="a tiny run for tests (seconds)"):
    """`--quick` and `--smoke`, mutually exclusive; neither is the full run."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help=quick_help)
    mode.add_argument("--smoke", action="store_true", help=smoke_help)


def add_seed(parser):
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def add_quiet(parser):
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars (summary only)"
    )


def add_saving(parser, what):
    """`--save-dir` and `--no-save`; `what` names what is saved."""
    parser.add_argument(
        "--save-dir",
        help=f"folder to save the trained {what} and sidecars in (default: "
        "saved_models/ for the full run on the State of the Union data, "
        "nothing otherwise)",
    )
    parser.add_argument(
        "--no-save", action="store_true", help="do not save, even in the full run"
    )


def per_mode_help(modes, key, unset="all"):
    """`default: full X, quick Y, smoke Z`, for an option's help text."""
    return "default: " + ", ".join(
        f"{m} {unset if settings[key] is None else settings[key]}"
        for m, settings in modes.items()
    )


def apply_mode(args, modes):
    """Sets `args.mode` and fills the options left unset from `modes[mode]`."""
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    for key, value in modes[args.mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def check_positive(parser, args, keys):
    """Stops with a usage error naming the first option set below 1."""
    for key in keys:
        value = getattr(args, key)
        if value is not None and value < 1:
            parser.error(f"--{key.replace('_', '-')} must be a positive integer")


def resolve_save_dir(args, default):
    """Only the full run on the State of the Union data saves by default."""
    if args.save_dir is None and args.mode == "full" and args.data is None:
        args.save_dir = default
    if args.no_save:
        args.save_dir = None


def display(path):
    """`path` relative to the working directory when it lies below it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def saved_line(path):
    """The report's line for a saved model, with its size."""
    size = os.path.getsize(path) / 2**20
    return f"    saved {display(path)} ({size:.1f} MiB)"
