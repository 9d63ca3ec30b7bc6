"""Command-line start-up: whole-process wall time of ``imgsim --help`` and ``imgsim score --help``.

``python -m benchmarks.bench_cli [--repeats 7]`` runs each command as a fresh process, in turn
(A B C D A B C D ...), and prints the median wall time of each with the ratio to TensorFlow's own
import — what every verb, ``--help`` included, paid before the CLI built only the chosen verb's
arguments. The goal is under 1 s for both ``--help`` commands.
"""

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass (interpreter floor)": [sys.executable, "-c", "pass"],
    "imgsim --help": [sys.executable, "-m", "imgsim", "--help"],
    "imgsim score --help": [sys.executable, "-m", "imgsim", "score", "--help"],
    "python -c 'import tensorflow'": [sys.executable, "-c", "import tensorflow"],
}


def run(repeats=7):
    """Median wall seconds of each of :data:`COMMANDS` over ``repeats`` interleaved runs (one warm-up)."""
    times = {name: [] for name in COMMANDS}
    for round_ in range(repeats + 1):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            if round_:  # the first round warms the page cache
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="counted runs of each command")
    args = parser.parse_args(argv)
    medians = run(args.repeats)
    tf = medians["python -c 'import tensorflow'"]
    for name, seconds in medians.items():
        print(f"{name:<40} {seconds:7.3f} s   TensorFlow import / this {tf / seconds:7.1f}×")
    for name in ("imgsim --help", "imgsim score --help"):
        print(f"goal {name} < 1 s: {'met' if medians[name] < 1 else 'missed'}")


if __name__ == "__main__":
    main()
