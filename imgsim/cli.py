"""Command line: ``imgsim VERB [options]``. Argument parsing only; each verb calls one library function.

Start-up stays fast: only the chosen verb's arguments are built, and a verb
imports what it needs (TensorFlow included) only once it runs, so
``imgsim --help`` and ``imgsim score --help`` import neither TensorFlow nor
Keras. ``imgsim train --help`` reads its defaults from ``TrainConfig`` and so
pays for TensorFlow's import.
"""

import argparse
import os
import sys

from imgsim.errors import DataWarning, ImgsimError


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help with every option's default (none shown where the default is None or a flag)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


# --------------------------------------------------------------------------- verbosity


def set_verbosity(level):
    """Quiet (-1), normal (0) or verbose (1) output for the libraries imgsim drives.

    Quiet turns off progress bars (tqdm), TensorFlow's C++ log and COLMAP's;
    verbose turns TensorFlow's and COLMAP's INFO lines on. Set through the
    environment, before those libraries load, so worker processes inherit it.
    """
    if level < 0:
        os.environ["TQDM_DISABLE"] = "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        os.environ["GLOG_minloglevel"] = "2"
    elif level > 0:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        os.environ["GLOG_minloglevel"] = "0"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["IMGSIM_VERBOSITY"] = str(level)


def set_thread_waits():
    """OpenMP threads sleep, not spin, while they wait (``OMP_WAIT_POLICY=PASSIVE``) unless set.

    Only the command does this: it owns its process, and nothing that reads
    the variable (FAISS's and scikit-learn's OpenMP runtimes) has loaded yet.
    Measured on 2 shared cores (load 15), spinning waits made FAISS's PQ
    training 158 s instead of 19.5 s and a flat search 2.4 s instead of
    0.09 s; sleeping waits cost next to nothing on an idle machine.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# --------------------------------------------------------------------------- train


def _add_train_args(parser, folds=False):
    from imgsim.train import TrainConfig

    d = TrainConfig()
    parser.add_argument("--data", default=d.data, help="data root (IMC 2025 layout or <scene>/<image>)")
    parser.add_argument("--runs-dir", default=d.runs_dir, help="parent folder of run folders")
    if not folds:  # cross-validation names its fold runs itself and splits by fold
        parser.add_argument("--run-name", default=None,
                            help="run folder name (default: a hash of the config)")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="most epochs (early stopping may end sooner)")
    parser.add_argument("--steps-per-epoch", type=int, default=None,
                        help="batches per epoch (default: training images // (p*k))")
    parser.add_argument("--p", type=int, default=d.p, help="scenes per batch")
    parser.add_argument("--k", type=int, default=d.k, help="images per scene in a batch")
    parser.add_argument("--learning-rate", type=float, default=d.learning_rate, help="Adam learning rate")
    parser.add_argument("--margin", type=float, default=d.margin, help="triplet margin (unit vectors: distances in [0, 2])")
    parser.add_argument("--distance-metric", default=d.distance_metric,
                        choices=["L2", "squared-L2", "angular"], help="distance of the triplet loss")
    parser.add_argument("--patience", type=int, default=d.patience, help="early-stopping patience in epochs")
    parser.add_argument("--monitor", default=d.monitor,
                        choices=["val_map_at_r", "val_precision_at_1", "val_loss"],
                        help="validation figure that picks best.keras and stops early")
    parser.add_argument("--pca-copies", type=int, default=d.pca_copies,
                        help="augmented copies per image in the head's PCA initialisation")
    parser.add_argument("--head-init", default=d.embedding.head_init,
                        choices=["pca", "random", "identity", "whitening"],
                        help="initialisation of the dense head")
    parser.add_argument("--alpha", type=float, default=d.embedding.alpha, help="MobileNetV2 width multiplier")
    parser.add_argument("--image-size", type=int, default=d.embedding.image_size, help="input side in pixels")
    parser.add_argument("--trainable-layers", type=int, default=d.embedding.trainable_layers,
                        help="last backbone layers fine-tuned")
    parser.add_argument("--embedding-dim", type=int, default=d.embedding.embedding_dim,
                        help="embedding size (the hidden layer is twice this)")
    parser.add_argument("--augment-strength", type=float, default=d.augment.strength,
                        help="scales every augmentation (0: none)")
    parser.add_argument("--seed", type=int, default=d.seed, help="batch sampling, augmentation and init")
    if not folds:
        parser.add_argument("--split-seed", type=int, default=d.split_seed,
                            help="seed of the split by scene")
    parser.add_argument("--on-error", default=d.on_error, choices=["raise", "skip"],
                        help="bad image files: stop, or skip and count them in the log")
    parser.add_argument("--workers", type=int, default=d.workers, help="batch-loading threads")
    _add_recipe_args(parser, d)


def _add_recipe_args(parser, d):
    """Issue 12's options: miners, memory, sampling, pooling, ensembles, fine-tuning, fast mode."""
    from imgsim.batches import SAMPLINGS
    from imgsim.losses import MINERS
    from imgsim.model import HEADS, MERGES, POOLINGS
    from imgsim.train import MODES

    e = d.embedding
    parser.add_argument("--miner", default=d.miner, choices=MINERS,
                        help="triplet mining: tfa's semi-hard or batch-hard, batch-all, "
                             "distance-weighted")
    parser.add_argument("--soft", action="store_true",
                        help="soft-margin triplets log1p(exp(d_ap - d_an)) (not semihard)")
    parser.add_argument("--xbm-size", type=int, default=d.xbm_size,
                        help="cross-batch memory slots (XBM; 0: off)")
    parser.add_argument("--sampling", default=d.sampling, choices=SAMPLINGS,
                        help="pk: random scenes per batch; dataset: scenes of as few datasets "
                             "as possible (look-alike negatives)")
    parser.add_argument("--pooling", default=e.pooling, choices=POOLINGS,
                        help="global average, generalised-mean or attention pooling")
    parser.add_argument("--gem-p", type=float, default=e.gem_p, help="initial GeM exponent")
    parser.add_argument("--ensemble-alpha", type=float, default=None,
                        help="a second MobileNetV2 backbone of this width (e.g. 0.35)")
    parser.add_argument("--ensemble", default=e.ensemble, choices=MERGES,
                        help="merge of the two backbones' L2-normalised features")
    parser.add_argument("--head", default=e.head, choices=HEADS,
                        help="mlp: the seed's; linear: one dense layer; none: pooled features")
    parser.add_argument("--hidden-dim", type=int, default=None,
                        help="width of the mlp head's hidden layer (default: 2 * embedding dim)")
    parser.add_argument("--whitening-shrinkage", type=float, default=e.whitening_shrinkage,
                        help="--head-init whitening: weight of the identity in the within-scene "
                             "covariance (1: no whitening)")
    parser.add_argument("--dropout", type=float, default=e.dropout, help="dropout before the head")
    parser.add_argument("--weight-decay", type=float, default=e.weight_decay,
                        help="L2 factor on the head's kernels")
    parser.add_argument("--l2sp", type=float, default=d.l2sp,
                        help="L2-SP strength toward the ImageNet backbone weights (0: off)")
    parser.add_argument("--backbone-lr-factor", type=float, default=d.backbone_lr_factor,
                        help="backbone learning rate relative to the head's")
    parser.add_argument("--unfreeze-every", type=int, default=d.unfreeze_every,
                        help="gradual unfreezing: one more backbone block every N epochs (0: off)")
    parser.add_argument("--mode", default=d.mode, choices=MODES,
                        help="full: images through the whole network; fast: train the part "
                             "after the frozen backbone on cached features")
    parser.add_argument("--cache-copies", type=int, default=d.cache_copies,
                        help="fast mode: augmented copies cached per image")
    parser.add_argument("--cache-dir", default=None,
                        help="fast mode: feature cache folder (default: ~/.cache/imgsim/features)")


_NOT_TRAINING = ("func", "command", "quiet", "verbose")


def _train_config(args, skip=()):
    """The TrainConfig of parsed training options (``skip``: another verb's own options)."""
    from imgsim.train import flat_config

    return flat_config(**{k: v for k, v in vars(args).items()
                          if k not in _NOT_TRAINING and k not in skip})


def cmd_train(args):
    from imgsim.train import fit

    fit(_train_config(args))


# --------------------------------------------------------------------------- crossval

_CROSSVAL_ONLY = ("from_sweep",)


def _add_crossval_args(p):
    from imgsim.crossval import CrossValConfig

    d = CrossValConfig()
    _add_train_args(p, folds=True)
    p.set_defaults(mode="fast", trainable_layers=0)  # the cheap recipe: a head on cached features
    p.add_argument("--folds", type=int, default=d.folds, help="folds by scene")
    p.add_argument("--fold-seed", type=int, default=d.fold_seed,
                   help="seeds the folds and each fold's validation scenes")
    p.add_argument("--group-by-dataset", action="store_true",
                   help="keep each dataset's scenes in one fold (test on unseen datasets)")
    p.add_argument("--cv-val-fraction", dest="val_fraction", type=float, default=d.val_fraction,
                   help="share of each fold's training scenes used for early stopping")
    p.add_argument("--baseline-alpha", type=float, default=d.baseline_alpha,
                   help="width of the ImageNet GAP baseline")
    p.add_argument("--shortlist-k", type=int, default=d.shortlist_k,
                   help="neighbours per image in the shortlist figure")
    p.add_argument("--max-pairs", dest="max_pairs_per_dataset", type=int,
                   default=d.max_pairs_per_dataset, help="positive pairs per dataset and fold")
    p.add_argument("--n-boot", type=int, default=d.n_boot, help="bootstrap resamples")
    p.add_argument("--level", type=float, default=d.level, help="coverage of the intervals")
    p.add_argument("--name", default=d.name, help="the recipe's name in the report")
    p.add_argument("--report-dir", default=None,
                   help="report folder (default: reports/crossval/<name>)")
    p.add_argument("--untrained", action="store_true",
                   help="evaluate the recipe's network without training it (head none, or "
                        "linear with --head-init identity)")
    p.add_argument("--from-sweep", default=None, metavar="SWEEP_DIR",
                   help="instead: compare the recipes of a finished sweep of "
                        "notebooks/06_crossval.ipynb (needs --report-dir)")


def cmd_crossval(args):
    from imgsim import crossval
    from imgsim.errors import ConfigError

    if args.from_sweep:
        if not args.report_dir:
            raise ConfigError("--from-sweep needs --report-dir")
        table = crossval.sweep_report(crossval.sweep_results(args.from_sweep), args.report_dir)
        print(open(os.path.join(args.report_dir, "summary.md")).read())
        return 0 if len(table) else 1
    options = {k: v for k, v in vars(args).items()
               if k not in _NOT_TRAINING and k not in _CROSSVAL_ONLY}
    config = crossval.flat_config(**options)
    result = crossval.crossval(config)
    print(crossval.summary_markdown(result))
    print(f"report: {config.report_path()}")


# --------------------------------------------------------------------------- embed


def _add_embed_args(p):
    p.add_argument("folder", help="data folder (IMC 2025 layout or <scene>/<image>)")
    p.add_argument("--model", default=None,
                   help="a .keras model (default: ImageNet MobileNetV2 GAP features)")
    p.add_argument("--out", default="embeddings.npz", help="output .npz (paths, labels, embeddings)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--image-size", type=int, default=224,
                   help="input side of the ImageNet default (64 to 1024)")
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="bad image files: stop, or leave them out and count them")
    _add_dask_args(p, "embed")
    p.add_argument("--cache-dir", default=None,
                   help="folder of the content-keyed embedding shards, so a killed run resumes "
                        "(default with Dask: ~/.cache/imgsim/embeddings); on a cluster it must be "
                        "on storage every worker mounts at the same path")


def _add_dask_args(p, what):
    dask = p.add_mutually_exclusive_group()
    dask.add_argument("--workers", type=int, default=None,
                      help=f"{what} on a local Dask cluster of this many worker processes")
    dask.add_argument("--scheduler", default=None,
                      help=f"{what} on an existing Dask cluster: its scheduler's address (tcp://HOST:PORT)")


def cmd_embed(args):
    from imgsim.model import embed_folder

    embed_folder(args.folder, args.model, args.out, batch_size=args.batch_size,
                 image_size=args.image_size, on_error=args.on_error, scheduler=args.scheduler,
                 workers=args.workers, cache_dir=args.cache_dir)


# --------------------------------------------------------------------------- evaluate


def _add_evaluate_args(p):
    p.add_argument("--run", default=None, help="run folder (default: the ImageNet baseline)")
    p.add_argument("--data", default=None, help="data root (default: the run's)")
    p.add_argument("--report-dir", default=None, help="report folder (default: reports/<run name>)")
    p.add_argument("--protocols", nargs="+", default=["hard", "easy"], choices=["hard", "easy"],
                   help="negative-pair protocols")
    p.add_argument("--max-pairs", type=int, default=60, help="positive pairs per dataset")
    p.add_argument("--image-size", type=int, default=224, help="ImageNet baseline input size")
    p.add_argument("--sift-features", type=int, default=4000, help="SIFT features per image")
    p.add_argument("--sift-max-side", type=int, default=1024, help="longest side SIFT sees, in pixels")
    p.add_argument("--cache-dir", default=None, help="SIFT feature cache folder (default: user cache)")
    p.add_argument("--no-sift-retrieval", action="store_true",
                   help="skip ranking all test pairs by SIFT inliers (n^2/2 matchings)")
    p.add_argument("--workers", type=int, default=2, help="matching processes")


def cmd_evaluate(args):
    from imgsim.evaluate import EvalConfig, evaluate, summary_markdown
    from imgsim.sift import SiftConfig

    result = evaluate(EvalConfig(
        run=args.run, data=args.data, report_dir=args.report_dir, protocols=args.protocols,
        max_pairs_per_dataset=args.max_pairs, image_size=args.image_size,
        cache_dir=args.cache_dir, sift_retrieval=not args.no_sift_retrieval, workers=args.workers,
        sift=SiftConfig(max_side=args.sift_max_side, n_features=args.sift_features)))
    print(summary_markdown(result))
    print(f"report: {result['report_dir']}")


# --------------------------------------------------------------------------- sweep


def _add_sweep_args(p):
    p.add_argument("experiment", help="experiments/<name>.yaml")
    p.add_argument("--out-root", default=os.path.join("reports", "sweeps"),
                   help="runs go to <out-root>/<name>/<run-id>/")
    p.add_argument("--workers", type=int, default=1, help="local Dask worker processes")
    p.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler (tcp://HOST:PORT)")
    p.add_argument("--retry-failed", action="store_true", help="run failed runs again")


def cmd_sweep(args):
    from imgsim.sweep import sweep

    result = sweep(args.experiment, out_root=args.out_root, workers=args.workers,
                   scheduler=args.scheduler, retry_failed=args.retry_failed)
    with open(os.path.join(result["root"], "summary.md"), encoding="utf-8") as f:
        print(f.read())
    earlier = (f" ({result['failed_earlier']} from an earlier sweep: --retry-failed runs them "
               "again)") if result["failed_earlier"] else ""
    print(f"ran {result['ran']}, skipped {result['skipped']} finished, failed {result['failed']}"
          f"{earlier}; summary: {os.path.join(result['root'], 'summary.md')}")
    return 1 if result["failed"] else 0


# --------------------------------------------------------------------------- serve


def _port(text):
    """argparse type: a TCP port number."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1-65535)")
    return port


def _add_serve_args(p):
    p.add_argument("--model", default=None,
                   help="a .keras model (default: the report's model, else the demo run's best.keras "
                   "if `make demo` ran, else ImageNet MobileNetV2 GAP features)")
    p.add_argument("--data", default=None, help="data root to pick images from (default: the embedded sample)")
    p.add_argument("--report", default="auto",
                   help="an `imgsim evaluate` metrics.json: calibrated thresholds and the fused "
                   "probability; 'auto': the shipped ImageNet calibration when the model is the one it "
                   "measured; 'none': uncalibrated")
    p.add_argument("--port", type=_port, default=8866, help="port to listen on (must be free)")
    p.add_argument("--ip", default="127.0.0.1", help="address to listen on")
    p.add_argument("--image-size", type=int, default=224, help="ImageNet baseline input size (without a report)")
    p.add_argument("--session", default=None,
                   help="history CSV kept across page reloads (default: ~/.cache/imgsim/inspector/history.csv)")
    p.add_argument("--max-upload-mb", type=float, default=25.0, help="largest upload accepted")
    p.add_argument("--cull-idle-timeout", type=int, default=120,
                   help="seconds before the kernel of a closed page is shut down")
    p.add_argument("--notebook", default=None, help="inspector notebook (default: notebooks/04_pair_inspector.ipynb)")


def cmd_serve(args):
    from imgsim.serve import serve
    from imgsim.widgets import default_session_file

    return serve(args.model, args.data, None if args.report.lower() == "none" else args.report,
                 port=args.port, ip=args.ip, image_size=args.image_size,
                 session_file=args.session or default_session_file(),
                 cull_idle_timeout=args.cull_idle_timeout, max_upload_mb=args.max_upload_mb,
                 notebook=args.notebook)


# --------------------------------------------------------------------------- demo


def _add_demo_args(p):
    p.add_argument("--runs-dir", default="runs", help="parent folder of the demo's run folder")
    p.add_argument("--report-dir", default=os.path.join("reports", "demo"), help="where the table goes")
    p.add_argument("--epochs", type=int, default=None,
                   help="override the demo's epochs (default: 6)")


def cmd_demo(args):
    from imgsim.demo import DemoConfig, run_demo

    config = DemoConfig(runs_dir=args.runs_dir, report_dir=args.report_dir)
    if args.epochs is not None:
        config.epochs = args.epochs
    run_demo(config)


# --------------------------------------------------------------------------- reconstruct


def _add_reconstruct_args(p):
    from imgsim.reconstruct import SIFT_DEFAULTS, ReconstructConfig
    from imgsim.sfm import CAMERA_MODES, SfmConfig

    d, sfm = ReconstructConfig(), SfmConfig()
    p.add_argument("data_root", help="IMC folder (train_labels.csv or sample_submission.csv) "
                   "or <dataset>/<image> folders")
    p.add_argument("--out", default="submission.csv", help="the submission CSV")
    p.add_argument("--work-dir", default=None, help="stage outputs, resumable (default: <out>.work)")
    p.add_argument("--datasets", nargs="+", default=None, help="only these datasets")
    p.add_argument("--shortlist-k", type=int, default=d.shortlist_k, help="neighbours per image by embedding")
    p.add_argument("--shortlist-index", default="auto", choices=["auto", "exact", "ivf", "hnsw", "ivfpq"],
                   help="how neighbours are found: exact, or an approximate FAISS index "
                        "(auto: exact up to 20,000 images per dataset)")
    p.add_argument("--all-pairs", action="store_true", help="match all pairs (no shortlist)")
    p.add_argument("--all-pairs-up-to", type=int, default=d.all_pairs_up_to,
                   help="datasets this small match all pairs anyway")
    p.add_argument("--model", default=None, help="a .keras model (default: ImageNet GAP)")
    p.add_argument("--image-size", type=int, default=d.image_size, help="input side of the ImageNet default")
    p.add_argument("--processes", type=int, default=None,
                   help="matching processes and COLMAP threads (default: every core)")
    _add_dask_args(p, "embed, match and SfM (one task per cluster)")
    g = p.add_argument_group("matching (SIFT)")
    g.add_argument("--sift-features", type=int, default=SIFT_DEFAULTS["n_features"],
                   help="SIFT features per image")
    g.add_argument("--sift-max-side", type=int, default=SIFT_DEFAULTS["max_side"],
                   help="longest side SIFT sees, in pixels")
    g.add_argument("--static-px", type=float, default=SIFT_DEFAULTS["static_px"],
                   help="matches moving less than this (pixels) between same-size photos are "
                        "a still backdrop or watermark: dropped (0: keep)")
    g = p.add_argument_group("clustering (the match graph)")
    g.add_argument("--min-inliers", type=int, default=d.min_inliers,
                   help="effective inliers for a graph edge")
    g.add_argument("--min-cluster-size", type=int, default=d.min_cluster_size,
                   help="smaller clusters are outliers")
    g.add_argument("--cluster-method", choices=("louvain", "components"), default=d.cluster_method,
                   help="communities merged back by conductance, or connected components")
    g.add_argument("--planar-weight", type=float, default=d.planar_weight,
                   help="what an inlier one homography explains counts, in [0, 1]")
    g.add_argument("--min-spread", type=float, default=d.min_spread,
                   help="pairs whose inliers cover less of an image (fraction of 8x8 cells) count 0")
    g.add_argument("--min-best-inliers", type=float, default=d.min_best_inliers,
                   help="an image whose strongest edge is weaker is an outlier")
    g.add_argument("--max-conductance", type=float, default=d.max_conductance,
                   help="communities joined at least this strongly are merged")
    g.add_argument("--min-bridge-images", type=int, default=d.min_bridge_images,
                   help="communities whose cut touches this many images on each side are merged")
    g.add_argument("--louvain-resolution", type=float, default=d.louvain_resolution,
                   help="Louvain resolution (larger: smaller communities before merging)")
    g.add_argument("--fusion-model", default=None,
                   help="JSON of a fitted fusion model (FusionModel.to_dict or an evaluate "
                        "metrics.json): its same-scene probability weighs each edge")
    g = p.add_argument_group("structure from motion (pycolmap)")
    g.add_argument("--sfm-features", type=int, default=None,
                   help="SIFT features per image for SfM: re-match each cluster's verified "
                        "pairs at this budget (default: the matching features)")
    g.add_argument("--sfm-max-side", type=int, default=None,
                   help="longest side of SfM's SIFT, in pixels (default: --sift-max-side)")
    g.add_argument("--camera-mode", choices=CAMERA_MODES, default=sfm.camera_mode,
                   help="auto: share a camera between images of one size and EXIF camera; "
                        "single: one camera per image size; per_image")
    g.add_argument("--no-exif-focal", action="store_true",
                   help="ignore EXIF focal lengths (default: use them as priors)")
    g.add_argument("--init-min-inliers", type=int, default=sfm.init_min_num_inliers,
                   help="inliers of COLMAP's initial pair")
    g.add_argument("--init-min-tri-angle", type=float, default=sfm.init_min_tri_angle,
                   help="triangulation angle of the initial pair, degrees")
    g.add_argument("--init-num-trials", type=int, default=sfm.init_num_trials,
                   help="initial pairs tried per model")
    g.add_argument("--init-max-forward-motion", type=float, default=sfm.init_max_forward_motion,
                   help="refuse initial pairs moving more along the view than this, in [0, 1]")
    g.add_argument("--abs-pose-min-inliers", type=int, default=sfm.abs_pose_min_num_inliers,
                   help="2D-3D inliers to register an image")
    g.add_argument("--abs-pose-min-ratio", type=float, default=sfm.abs_pose_min_inlier_ratio,
                   help="2D-3D inlier ratio to register an image")
    g.add_argument("--single-model", action="store_true",
                   help="one model per cluster (default: new models from what a model leaves out)")
    g.add_argument("--retry-below", type=float, default=sfm.retry_below,
                   help="map again from relaxed initial-pair thresholds when the largest model "
                        "holds less than this fraction of its cluster (0: never)")
    g.add_argument("--no-leftovers", action="store_true",
                   help="skip the second pass that registers unplaced images into the largest "
                        "model with relaxed thresholds")
    g.add_argument("--max-sfm-seconds", type=float, default=sfm.max_seconds,
                   help="time limit of one mapping run (0: none)")


def reconstruct_config(args):
    """The :class:`~imgsim.reconstruct.ReconstructConfig` of parsed ``reconstruct`` arguments."""
    from imgsim.reconstruct import ReconstructConfig

    sfm_sift = {k: v for k, v in (("n_features", args.sfm_features), ("max_side", args.sfm_max_side))
                if v is not None}
    sfm = {"camera_mode": args.camera_mode, "exif_focal": not args.no_exif_focal,
           "init_min_num_inliers": args.init_min_inliers, "init_min_tri_angle": args.init_min_tri_angle,
           "init_num_trials": args.init_num_trials, "init_max_forward_motion": args.init_max_forward_motion,
           "abs_pose_min_num_inliers": args.abs_pose_min_inliers,
           "abs_pose_min_inlier_ratio": args.abs_pose_min_ratio, "multiple_models": not args.single_model,
           "retry_below": args.retry_below, "register_leftovers": not args.no_leftovers,
           "max_seconds": args.max_sfm_seconds}
    return ReconstructConfig(
        shortlist_k=0 if args.all_pairs else args.shortlist_k, shortlist_index=args.shortlist_index,
        all_pairs_up_to=args.all_pairs_up_to,
        min_inliers=args.min_inliers, min_cluster_size=args.min_cluster_size, model=args.model,
        image_size=args.image_size, processes=args.processes,
        sift={"max_side": args.sift_max_side, "n_features": args.sift_features,
              "static_px": args.static_px},
        cluster_method=args.cluster_method, planar_weight=args.planar_weight,
        min_spread=args.min_spread, min_best_inliers=args.min_best_inliers,
        max_conductance=args.max_conductance, min_bridge_images=args.min_bridge_images,
        louvain_resolution=args.louvain_resolution,
        fusion_model=args.fusion_model, sfm_sift=sfm_sift or None, sfm=sfm,
        scheduler=args.scheduler, workers=args.workers)


def cmd_reconstruct(args):
    from imgsim.reconstruct import reconstruct

    config = reconstruct_config(args)  # every setting checked before any work
    result = reconstruct(args.data_root, args.out, work_dir=args.work_dir, config=config,
                         datasets=args.datasets)
    registered = sum(info["registered"] for info in result["info"].values())
    print(f"wrote {args.out}: {len(result['submission'])} images, {registered} registered, "
          f"{result['wall_s']:.1f} s")


# --------------------------------------------------------------------------- score


def _add_score_args(p):
    p.add_argument("gt", help="ground truth, train_labels.csv form")
    p.add_argument("submission", help="submission CSV (Kaggle form)")
    p.add_argument("--thresholds", default=None,
                   help="dataset,scene,thresholds CSV (default: fractions of each scene's radius)")
    p.add_argument("--official", action="store_true",
                   help="headline the official Kaggle metric code's number (imc25-utils metric.py, "
                        "quirks included) instead of imgsim's rule; both are printed where they differ")


def _figures(d):
    scored = (f"score {100 * d['score']:.2f}  mAA {d['maa']:.3f}" if d["score"] is not None
              else "not scored (mAA undefined)")
    return f"{scored}  clusterness {d['clusterness']:.3f}"


def cmd_score(args):
    import math
    import warnings

    from imgsim.imc import ScoreWarning, score

    def run(official):
        with warnings.catch_warnings():  # printed below, labelled with their rule
            warnings.simplefilter("ignore", ScoreWarning)
            return score(args.gt, args.submission, args.thresholds, official=official)

    rule = {False: "imgsim rule", True: "official rule"}
    result = run(args.official)
    try:
        other = run(not args.official)
    except ImgsimError as exc:
        other = exc
    for r in (result, other) if isinstance(other, dict) else (result,):
        for message in r["warnings"]:
            print(f"warning ({rule[r['official']]}): {message}", file=sys.stderr)
    for name, d in sorted(result["datasets"].items()):
        line, alt = f"{name}: {_figures(d)}", isinstance(other, dict) and _figures(other["datasets"][name])
        print(line + (f"  ({rule[not args.official]}: {alt})" if alt and alt != _figures(d) else ""))
    print(f"IMC score: {result['score']:.2f} ({rule[args.official]})")
    if not isinstance(other, dict):
        print(f"{rule[not args.official]}: cannot score: {type(other).__name__}: {other}")
    elif math.isclose(other["score"], result["score"], rel_tol=0, abs_tol=1e-9):
        print(f"{rule[not args.official]}: agrees")
    else:
        digits = 2 if f"{other['score']:.2f}" != f"{result['score']:.2f}" else 6
        print(f"{rule[not args.official]}: {other['score']:.{digits}f}")


# --------------------------------------------------------------------------- parser

# verb -> (one-line help, function adding its arguments, function running it)
VERBS = {
    "train": ("train (or resume) a triplet embedding run", _add_train_args, cmd_train),
    "crossval": ("k-fold-by-scene comparison of a training recipe with ImageNet",
                 _add_crossval_args, cmd_crossval),
    "embed": ("embed every image under a folder into an .npz", _add_embed_args, cmd_embed),
    "evaluate": ("deep vs SIFT vs fused report on held-out scenes", _add_evaluate_args, cmd_evaluate),
    "sweep": ("run an experiments/<name>.yaml sweep with papermill on Dask", _add_sweep_args, cmd_sweep),
    "serve": ("serve the pair inspector as a web app (Voilà)", _add_serve_args, cmd_serve),
    "demo": ("train the cross-validated recipe on the embedded sample, compare with ImageNet",
             _add_demo_args, cmd_demo),
    "reconstruct": ("IMC task: cluster scenes and pose images (pycolmap)", _add_reconstruct_args,
                    cmd_reconstruct),
    "score": ("IMC 2025 score of a submission against ground truth", _add_score_args, cmd_score),
}


def _chosen_verb(argv):
    """The verb named in ``argv`` (the first word that is one), or None."""
    return next((word for word in argv if word in VERBS), None)


def build_parser(argv=None):
    """The parser; only the verb named in ``argv`` (all verbs when None) gets its arguments."""
    verb = _chosen_verb(argv) if argv is not None else None
    parser = argparse.ArgumentParser(prog="imgsim", description="image similarity toolkit",
                                     formatter_class=_Formatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB")
    for name, (help_text, add_args, run) in VERBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_Formatter)
        if argv is None or name == verb:
            add_args(p)
            loud = p.add_mutually_exclusive_group()
            loud.add_argument("-q", "--quiet", action="store_true",
                              help="results and errors only: no progress bars or library logs")
            loud.add_argument("-v", "--verbose", action="store_true",
                              help="library logs too (TensorFlow, COLMAP)")
        p.set_defaults(func=run)
    return parser


def _fail(message, status=2):
    """Print ``message`` as one line on stderr, after closing the tqdm bars an error left open
    (so that it starts on a line of its own); returns ``status``."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ()) or ()):
        bar.close()
    print(message, file=sys.stderr)
    return status


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """imgsim's own warnings (e.g. ``DataWarning``) as one line, without the source line."""
    print(f"{category.__name__}: {message}", file=file or sys.stderr)


# File-system failures that are the environment's, not a bug: reported as one line.
_ENVIRONMENT_ERRNOS = ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EMFILE", "ENAMETOOLONG")


def main(argv=None):
    """Run ``imgsim VERB ...``; returns the exit status.

    0: done; 1: done, but some runs failed (``sweep``); 2: bad input, printed
    as one line ``ErrorClass: file or argument: problem`` on stderr, nothing
    of earlier results changed; 130: interrupted.
    """
    import errno
    import warnings

    argv = sys.argv[1:] if argv is None else list(argv)
    # Before the parser: building train's arguments imports TensorFlow.
    set_verbosity(-1 if {"-q", "--quiet"} & set(argv) else 1 if {"-v", "--verbose"} & set(argv) else 0)
    set_thread_waits()
    args = build_parser(argv).parse_args(argv)
    with warnings.catch_warnings():  # restores the filters and showwarning afterwards
        warnings.simplefilter("always", DataWarning)  # each run says what it repaired
        warnings.showwarning = _one_line_warning
        try:
            return args.func(args) or 0
        except ImgsimError as exc:
            return _fail(f"{type(exc).__name__}: {exc}")
        except OSError as exc:
            if exc.filename is None or errno.errorcode.get(exc.errno) not in _ENVIRONMENT_ERRNOS:
                raise
            return _fail(f"{type(exc).__name__}: {exc.filename}: {exc.strerror}")
        except MemoryError as exc:  # numpy says how much it tried to allocate
            return _fail(f"MemoryError: {exc or 'out of memory'} (smaller images, batches or data?)")
        except KeyboardInterrupt:
            return _fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
