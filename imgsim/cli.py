"""Command line: ``imgsim train | embed | demo``. Argument parsing only."""

import argparse
import os
import sys

from imgsim.errors import ImgsimError


def _add_train_args(parser):
    from imgsim.train import TrainConfig

    d = TrainConfig()
    parser.add_argument("--data", default=d.data, help="data root (IMC 2025 or <scene>/<image>)")
    parser.add_argument("--runs-dir", default=d.runs_dir)
    parser.add_argument("--run-name", default=None, help="run folder name (default: config hash)")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--p", type=int, default=d.p, help="scenes per batch")
    parser.add_argument("--k", type=int, default=d.k, help="images per scene in a batch")
    parser.add_argument("--learning-rate", type=float, default=d.learning_rate)
    parser.add_argument("--margin", type=float, default=d.margin)
    parser.add_argument("--distance-metric", default=d.distance_metric,
                        choices=["L2", "squared-L2", "angular"])
    parser.add_argument("--patience", type=int, default=d.patience)
    parser.add_argument("--monitor", default=d.monitor,
                        choices=["val_map_at_r", "val_precision_at_1", "val_loss"])
    parser.add_argument("--pca-copies", type=int, default=d.pca_copies)
    parser.add_argument("--head-init", default=d.embedding.head_init, choices=["pca", "random"])
    parser.add_argument("--alpha", type=float, default=d.embedding.alpha)
    parser.add_argument("--image-size", type=int, default=d.embedding.image_size)
    parser.add_argument("--trainable-layers", type=int, default=d.embedding.trainable_layers)
    parser.add_argument("--embedding-dim", type=int, default=d.embedding.embedding_dim)
    parser.add_argument("--augment-strength", type=float, default=d.augment.strength)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--split-seed", type=int, default=d.split_seed)
    parser.add_argument("--on-error", default=d.on_error, choices=["raise", "skip"])
    parser.add_argument("--workers", type=int, default=d.workers)


def _train_config(args):
    from imgsim.augment import AugmentConfig
    from imgsim.model import EmbeddingConfig
    from imgsim.train import TrainConfig

    return TrainConfig(
        data=args.data, runs_dir=args.runs_dir, run_name=args.run_name, epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch, p=args.p, k=args.k, learning_rate=args.learning_rate,
        margin=args.margin, distance_metric=args.distance_metric, patience=args.patience,
        monitor=args.monitor, pca_copies=args.pca_copies,
        seed=args.seed, split_seed=args.split_seed, on_error=args.on_error, workers=args.workers,
        embedding=EmbeddingConfig(alpha=args.alpha, image_size=args.image_size,
                                  trainable_layers=args.trainable_layers,
                                  embedding_dim=args.embedding_dim,
                                  hidden_dim=2 * args.embedding_dim, head_init=args.head_init),
        augment=AugmentConfig(strength=args.augment_strength))


def cmd_train(args):
    from imgsim.train import fit

    fit(_train_config(args))


def cmd_embed(args):
    from imgsim.model import embed_folder

    embed_folder(args.folder, args.model, args.out, batch_size=args.batch_size,
                 image_size=args.image_size)


def cmd_evaluate(args):
    from imgsim.evaluate import EvalConfig, evaluate
    from imgsim.sift import SiftConfig

    evaluate(EvalConfig(
        run=args.run, data=args.data, report_dir=args.report_dir, protocols=args.protocols,
        max_pairs_per_dataset=args.max_pairs, image_size=args.image_size,
        cache_dir=args.cache_dir, sift_retrieval=not args.no_sift_retrieval, workers=args.workers,
        sift=SiftConfig(max_side=args.sift_max_side, n_features=args.sift_features)))


def cmd_sweep(args):
    from imgsim.sweep import sweep

    result = sweep(args.experiment, out_root=args.out_root, workers=args.workers,
                   scheduler=args.scheduler, retry_failed=args.retry_failed)
    print(open(os.path.join(result["root"], "summary.md")).read())
    print(f"ran {result['ran']}, skipped {result['skipped']} finished, failed {result['failed']}; "
          f"summary: {os.path.join(result['root'], 'summary.md')}")
    return 1 if result["failed"] else 0


def cmd_serve(args):
    from imgsim.widgets import serve

    return serve(args.notebook, port=args.port, ip=args.ip)


def cmd_demo(args):
    from imgsim.demo import DemoConfig, run_demo

    config = DemoConfig()
    config.train.runs_dir = args.runs_dir
    config.report_dir = args.report_dir
    if args.epochs:
        config.train.epochs = args.epochs
    run_demo(config)


def cmd_reconstruct(args):
    from imgsim.reconstruct import ReconstructConfig, reconstruct

    sift = {"max_side": args.sift_max_side, "n_features": args.sift_features}
    config = ReconstructConfig(shortlist_k=0 if args.all_pairs else args.shortlist_k,
                               all_pairs_up_to=args.all_pairs_up_to, min_inliers=args.min_inliers,
                               min_cluster_size=args.min_cluster_size, model=args.model,
                               image_size=args.image_size, sift=sift, processes=args.processes)
    result = reconstruct(args.data_root, args.out, work_dir=args.work_dir, config=config,
                         datasets=args.datasets)
    registered = sum(info["registered"] for info in result["info"].values())
    print(f"wrote {args.out}: {len(result['submission'])} images, {registered} registered, "
          f"{result['wall_s']:.1f} s")


def cmd_score(args):
    from imgsim.imc import score

    result = score(args.gt, args.submission, args.thresholds)
    for name, d in sorted(result["datasets"].items()):
        print(f"{name}: score {100 * d['score']:.2f}  mAA {d['maa']:.3f}  "
              f"clusterness {d['clusterness']:.3f}")
    print(f"IMC score: {result['score']:.2f}")


def build_parser():
    parser = argparse.ArgumentParser(prog="imgsim", description="image similarity toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train (or resume) a triplet embedding run")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("embed", help="embed every image under a folder into an .npz")
    p.add_argument("folder")
    p.add_argument("--model", default=None,
                   help="a .keras model (default: ImageNet MobileNetV2 GAP features)")
    p.add_argument("--out", default="embeddings.npz")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224, help="only for the ImageNet default")
    p.set_defaults(func=cmd_embed)
    p = sub.add_parser("evaluate", help="deep vs SIFT vs fused report on held-out scenes")
    p.add_argument("--run", default=None, help="run folder (default: ImageNet baseline)")
    p.add_argument("--data", default=None, help="data root (default: the run's)")
    p.add_argument("--report-dir", default=None, help="default reports/<run name>")
    p.add_argument("--protocols", nargs="+", default=["hard", "easy"], choices=["hard", "easy"])
    p.add_argument("--max-pairs", type=int, default=60, help="positive pairs per dataset")
    p.add_argument("--image-size", type=int, default=224, help="ImageNet baseline input size")
    p.add_argument("--sift-features", type=int, default=4000)
    p.add_argument("--sift-max-side", type=int, default=1024)
    p.add_argument("--cache-dir", default=None, help="SIFT feature cache folder")
    p.add_argument("--no-sift-retrieval", action="store_true",
                   help="skip ranking all test pairs by SIFT inliers (n^2/2 matchings)")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("sweep", help="run an experiments/<name>.yaml sweep with papermill on Dask")
    p.add_argument("experiment")
    p.add_argument("--out-root", default=os.path.join("reports", "sweeps"))
    p.add_argument("--workers", type=int, default=1, help="local Dask worker processes")
    p.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler")
    p.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("serve", help="serve the pair inspector as a web app (Voilà)")
    p.add_argument("--port", type=int, default=8866)
    p.add_argument("--ip", default="127.0.0.1")
    p.add_argument("--notebook", default=None, help="default notebooks/04_pair_inspector.ipynb")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("demo", help="train on the embedded sample, compare with ImageNet")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--report-dir", default=os.path.join("reports", "demo"))
    p.add_argument("--epochs", type=int, default=None)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("reconstruct", help="IMC task: cluster scenes and pose images (pycolmap)")
    p.add_argument("data_root", help="IMC folder (train_labels.csv or sample_submission.csv) "
                   "or <dataset>/<image> folders")
    p.add_argument("--out", default="submission.csv")
    p.add_argument("--work-dir", default=None, help="stage outputs, resumable (default <out>.work)")
    p.add_argument("--datasets", nargs="+", default=None)
    p.add_argument("--shortlist-k", type=int, default=10, help="neighbours per image by embedding")
    p.add_argument("--all-pairs", action="store_true", help="match all pairs (no shortlist)")
    p.add_argument("--all-pairs-up-to", type=int, default=20)
    p.add_argument("--min-inliers", type=int, default=30)
    p.add_argument("--min-cluster-size", type=int, default=3)
    p.add_argument("--model", default=None, help="a .keras model (default: ImageNet GAP)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--sift-features", type=int, default=4000)
    p.add_argument("--sift-max-side", type=int, default=1024)
    p.add_argument("--processes", type=int, default=None)
    p.set_defaults(func=cmd_reconstruct)
    p = sub.add_parser("score", help="IMC 2025 score of a submission against ground truth")
    p.add_argument("gt", help="ground truth, train_labels.csv form")
    p.add_argument("submission")
    p.add_argument("--thresholds", default=None, help="dataset,scene,thresholds CSV")
    p.set_defaults(func=cmd_score)
    return parser


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except ImgsimError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
