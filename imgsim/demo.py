"""The demo: the cross-validated training recipe vs the ImageNet backbone, on held-out scenes.

``run_demo(DemoConfig())``:

1. reads the cross-validation of the training recipes (``reports/training/metrics.json``,
   committed: ``imgsim crossval --from-sweep``) and takes its recommended recipe —
   the one that beats ImageNet on mAP@R with its interval above 0, else the one
   with the best within-dataset P@1 (what fine-tuning is still good for);
2. trains that recipe, as cross-validated but shorter, on the embedded sample's
   training scenes (fast mode: the frozen backbone runs once per photo);
3. embeds the sample's held-out test scenes with both models and prints P@1, R@5,
   mAP@R and within-dataset P@1 — and then what the cross-validation over the full
   photo collection says, because three test scenes cannot tell a better recipe
   from luck.

``reports/demo/metrics.json`` gets both tables; its ``run_dir`` (which the pair
inspector picks up) is set only when the recipe beats ImageNet, so the inspector
keeps the ImageNet embedding otherwise.
"""

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from imgsim import data as data_mod
from imgsim.config import DictConfig, check_range
from imgsim.errors import ConfigError
from imgsim.fileio import atomic_write_json, check_output_dir, read_json
from imgsim.train import TrainConfig, fit

SAMPLE_DATA = data_mod.SAMPLE_DATA
REPO_ROOT = os.path.dirname(os.path.dirname(SAMPLE_DATA))
TRAINING_REPORT = os.path.join(REPO_ROOT, "reports", "training", "metrics.json")
METRICS = ("precision_at_1", "recall_at_5", "map_at_r", "within_dataset_precision_at_1")
EVIDENCE = ("map_at_r", "within_dataset_precision_at_1", "tpr_at_fpr_1pct")


def _demo_train_config():
    """The seed's recipe, in case no cross-validation report is found."""
    from imgsim.augment import AugmentConfig

    return TrainConfig(data=SAMPLE_DATA, epochs=8, steps_per_epoch=6, p=7, k=4, margin=0.3,
                       learning_rate=1e-4, patience=4, augment=AugmentConfig(strength=2.0))


@dataclass
class DemoConfig(DictConfig):
    """The demo's training run and where its report goes.

    Attributes
    ----------
    train : TrainConfig or None
        None: the recommended recipe of ``training_report``, shortened to
        ``epochs`` × ``steps_per_epoch`` on the sample.
    training_report : str
        The recipes' cross-validation (``imgsim crossval --from-sweep``).
    runs_dir, report_dir : str
    epochs, steps_per_epoch, cache_copies : int
        How the recommended recipe is shortened for the sample.
    batch_size : int
    """

    train: TrainConfig = None
    training_report: str = TRAINING_REPORT
    runs_dir: str = "runs"
    report_dir: str = os.path.join("reports", "demo")
    epochs: int = 6
    steps_per_epoch: int = 6
    cache_copies: int = 2
    batch_size: int = 32

    def __post_init__(self):
        if isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)
        if self.train is not None and not isinstance(self.train, TrainConfig):
            raise ConfigError(f"train must be a TrainConfig or None, got {self.train!r}")
        super().__post_init__()
        for name in ("epochs", "steps_per_epoch", "cache_copies", "batch_size"):
            check_range(name, getattr(self, name), 1, integer=True)


def recommended_recipe(report):
    """Name, cross-validation result and verdict of the recipe a training report recommends.

    Parameters
    ----------
    report : dict
        ``reports/training/metrics.json`` (:func:`imgsim.crossval.sweep_report`).

    Returns
    -------
    (name, result, beats) : str, dict, bool
        ``beats``: the recipe's mAP@R interval lies above 0.
    """
    return report["recommended"], report["recipes"][report["recommended"]], report["beats_imagenet"]


def recipe_config(result, config):
    """The cross-validated recipe's TrainConfig, on the sample and shortened per ``config``."""
    train = TrainConfig.from_dict(result["config"]["train"])
    return dataclasses.replace(train, data=SAMPLE_DATA, runs_dir=config.runs_dir, split=None,
                               epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
                               cache_copies=min(train.cache_copies, config.cache_copies),
                               pca_copies=min(train.pca_copies, config.cache_copies),
                               cache_dir=None, workers=2)


def evaluate_retrieval(embeddings, table):
    """P@1, R@5, mAP@R and within-dataset P@1 of embeddings of the rows of ``table``."""
    from imgsim.crossval import fold_figures, fold_pairs, query_figures

    scenes = sorted(set(data_mod.scene_keys(table[table["scene"] != data_mod.OUTLIERS])))
    units = fold_figures(table, np.asarray(embeddings), fold_pairs(table, scenes))
    figures = query_figures(units["queries"])
    return {name: figures[name] for name in METRICS}


def results_frame(results):
    """The results as a DataFrame: one row per model, one column per metric."""
    import pandas as pd

    return pd.DataFrame.from_dict({name: {m: values.get(m) for m in METRICS}
                                   for name, values in results.items()}, orient="index")


def format_table(results):
    """Markdown table: one row per model, one column per metric ("–" where it does not apply)."""
    shown = [m for m in METRICS if any(m in v for v in results.values())]
    lines = ["| model | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for name, values in results.items():
        cells = ["–" if values.get(m) is None or np.isnan(values[m]) else f"{values[m]:.3f}"
                 for m in shown]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_on_test_scenes(run, train_config, batch_size=32, name="finetuned"):
    """The figures of :data:`METRICS` on a finished run's test scenes: ImageNet GAP vs ``best.keras``.

    Parameters
    ----------
    run : dict
        What :func:`imgsim.train.fit` returned (its ``split`` and ``run_dir``).
    train_config : TrainConfig
        The run's configuration (data root, input size of the baseline).
    name : str
        The fine-tuned model's row.

    Returns
    -------
    (results, test) : ({"imagenet": {...}, name: {...}}, test rows)
    """
    from imgsim.model import EmbeddingConfig, build_imagenet_baseline, embed, load_model

    split = data_mod.Split.from_dict(run["split"])
    table = data_mod.load_table(train_config.data, on_error=train_config.on_error)
    test = data_mod.select(table, split.test, outliers=True)
    paths = list(test["path"])
    baseline = build_imagenet_baseline(EmbeddingConfig(image_size=train_config.embedding.image_size))
    model = load_model(os.path.join(run["run_dir"], "best.keras"))
    results = {"imagenet": evaluate_retrieval(embed(baseline, paths, batch_size), test),
               name: evaluate_retrieval(embed(model, paths, batch_size), test)}
    return results, test


def evidence_lines(name, result, beats):
    """What the cross-validation says about the recipe, in plain words."""
    pooled, folds = result["pooled"], len(result["folds"])
    scenes = sum(len(f["test_scenes"]) for f in result["folds"])
    lines = [f"Cross-validated over {scenes} scenes ({folds} folds by scene, "
             f"reports/training/summary.md), {name} − ImageNet:"]
    for figure in EVIDENCE:
        v = pooled[figure]
        lines.append(f"  {figure}: {v['recipe']:.3f} vs {v['imagenet']:.3f}, "
                     f"{v['difference']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}]")
    m, w = pooled["map_at_r"], pooled["within_dataset_precision_at_1"]
    if beats:
        lines.append(f"{name} beats ImageNet on unseen scenes (mAP@R interval above 0), by "
                     f"{m['difference']:+.3f}" + ("" if w["low"] > 0 else
                                                  "; its within-dataset P@1 gain is not "
                                                  "significant (interval includes 0)")
                     + f". The interval's lower end is {m['low']:+.4f}, and every recipe of the "
                       "sweep was compared at 95 % without a multiple-comparison correction: weak "
                       "evidence. The pair inspector uses this demo's model; reconstruct keeps "
                       "ImageNet unless given --model.")
    else:
        lines.append(f"No training recipe beats ImageNet on mAP@R on unseen scenes (the interval "
                     f"of the best includes 0 or lies below it): ImageNet stays the default "
                     f"embedding of reconstruct and the pair inspector. Fine-tuning ({name}) is "
                     f"still good for within-dataset P@1 (look-alike scenes): {w['difference']:+.3f}.")
    return lines


def run_demo(config=None):
    """Train the recommended recipe, compare it with ImageNet on the test scenes, print, save."""
    config = (config or DemoConfig()).validate()
    check_output_dir(config.report_dir, "report_dir")  # before training, not after
    evidence = None
    if config.train is not None:
        train, name = config.train, "finetuned"
    elif os.path.isfile(config.training_report):
        name, result, beats = recommended_recipe(read_json(config.training_report))
        train, evidence = recipe_config(result, config), (name, result, beats)
    else:
        train, name = dataclasses.replace(_demo_train_config(), runs_dir=config.runs_dir,
                                          epochs=config.epochs), "seed"
    run = fit(train)
    split = data_mod.Split.from_dict(run["split"])
    results, test = compare_on_test_scenes(run, train, config.batch_size, name)
    beats = bool(evidence and evidence[2])
    report = dict(results, split=split.to_dict(), test_images=len(test), recipe=name,
                  trained_run_dir=run["run_dir"], beats_imagenet=beats)
    if beats:
        report["run_dir"] = run["run_dir"]
    path = atomic_write_json(os.path.join(config.report_dir, "metrics.json"), report)
    print(f"\nRecipe: {name}. Held-out test scenes of the sample ({len(split.test)} scenes, "
          f"{len(test)} images): {', '.join(split.test)}\n")
    print(format_table(results))
    print()
    if evidence:
        print("\n".join(evidence_lines(*evidence)))
    else:
        print(f"No cross-validation report at {config.training_report}: a split of "
              f"{len(split.test)} scenes cannot tell a better recipe from luck.")
    print(f"\nrun folder: {run['run_dir']}\nreport: {path}")
    return report
