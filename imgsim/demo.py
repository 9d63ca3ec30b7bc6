"""The demo experiment: ImageNet backbone vs fine-tuned embedding on held-out scenes.

``run_demo(DemoConfig())`` trains on the embedded sample's training scenes,
then embeds its test scenes with both models and prints P@1, R@5 and mAP@R.
Results go to ``reports/demo/metrics.json``.
"""

import os
from dataclasses import dataclass, field

from imgsim import data as data_mod
from imgsim.augment import AugmentConfig
from imgsim.config import DictConfig, check_range
from imgsim.errors import ConfigError
from imgsim.fileio import atomic_write_json, check_output_dir
from imgsim.train import TrainConfig, fit

SAMPLE_DATA = data_mod.SAMPLE_DATA
METRICS = ("precision_at_1", "recall_at_5", "map_at_r")


def _demo_train_config():
    return TrainConfig(data=SAMPLE_DATA, epochs=8, steps_per_epoch=6, p=7, k=4, margin=0.3,
                       learning_rate=1e-4, patience=4, augment=AugmentConfig(strength=2.0))


@dataclass
class DemoConfig(DictConfig):
    """The demo's training run and where its report goes."""

    train: TrainConfig = field(default_factory=_demo_train_config)
    report_dir: str = os.path.join("reports", "demo")
    batch_size: int = 32

    def __post_init__(self):
        if isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(f"train must be a TrainConfig, got {self.train!r}")
        super().__post_init__()
        check_range("batch_size", self.batch_size, 1, integer=True)


def evaluate_retrieval(model, table, batch_size=32):
    """P@1, R@5 and mAP@R of ``model`` over the rows of ``table`` (scene labels)."""
    from imgsim.metrics import retrieval_report
    from imgsim.model import embed

    embeddings = embed(model, list(table["path"]), batch_size)
    report = retrieval_report(embeddings, data_mod.label_ids(table), ks=(1, 5))
    return {name: report[name] for name in METRICS}


def results_frame(results):
    """The results as a DataFrame: one row per model, one column per metric."""
    import pandas as pd

    return pd.DataFrame.from_dict({name: {m: values[m] for m in METRICS}
                                   for name, values in results.items()}, orient="index")


def format_table(results):
    """Markdown table: one row per model, one column per metric."""
    lines = ["| model | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for name, values in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[m]:.3f}" for m in METRICS) + " |")
    return "\n".join(lines)


def compare_on_test_scenes(run, train_config, batch_size=32):
    """P@1, R@5, mAP@R on a finished run's test scenes: ImageNet GAP baseline vs ``best.keras``.

    Parameters
    ----------
    run : dict
        What :func:`imgsim.train.fit` returned (its ``split`` and ``run_dir``).
    train_config : TrainConfig
        The run's configuration (data root, input size of the baseline).

    Returns
    -------
    (results, test) : ({"imagenet": {...}, "finetuned": {...}}, test rows)
    """
    from imgsim.model import build_imagenet_baseline, load_model

    split = data_mod.Split.from_dict(run["split"])
    table = data_mod.load_table(train_config.data, on_error=train_config.on_error)
    test = data_mod.select(table, split.test, outliers=True)
    results = {
        "imagenet": evaluate_retrieval(build_imagenet_baseline(train_config.embedding), test,
                                       batch_size),
        "finetuned": evaluate_retrieval(load_model(os.path.join(run["run_dir"], "best.keras")), test,
                                        batch_size),
    }
    return results, test


def run_demo(config=None):
    """Train, evaluate both models on the test scenes, print and save the table."""
    config = (config or DemoConfig()).validate()
    check_output_dir(config.report_dir, "report_dir")  # before training, not after
    run = fit(config.train)
    split = data_mod.Split.from_dict(run["split"])
    results, test = compare_on_test_scenes(run, config.train, config.batch_size)
    report = dict(results, split=split.to_dict(), test_images=len(test), run_dir=run["run_dir"])
    path = atomic_write_json(os.path.join(config.report_dir, "metrics.json"), report)
    print(f"\nHeld-out test scenes ({len(split.test)} scenes, {len(test)} images): "
          f"{', '.join(split.test)}\n")
    print(format_table(results))
    print(f"\nrun folder: {run['run_dir']}\nreport: {path}")
    return report
