"""Build imgsim's embedded sample dataset (data/sample) from the shared photo collection.

Selects only scenes whose sources allow redistribution, caps each scene at a
seeded random subset, downscales the images and writes them in the IMC 2025
layout:

    <out>/train/<dataset>/<image>
    <out>/train_labels.csv   dataset,scene,image,rotation_matrix,translation_vector
    <out>/sources.csv        source rows of the selected images + sample_resized

Usage:
    python scripts/make_sample.py --src ../shared/data
"""

import argparse
import csv
import random
import shutil
from pathlib import Path

from PIL import Image, ImageOps

# (dataset, scene, source repositories allowed for that scene).
# Permissive licences first, then public benchmark sets that state no licence.
# Everything else is left out on purpose: magicleap/SuperGluePretrainedNetwork
# (non-commercial research only), NVlabs/instant-ngp (NVIDIA non-commercial),
# naver/mast3r (CC BY-NC-SA 4.0), and sources not listed here.
SELECTION = [
    ("phototourism_samples", "sacre_coeur", {"cvg/Hierarchical-Localization", "cvg/LightGlue"}),
    ("opensfm_samples", "lund", {"mapillary/OpenSfM"}),
    ("opensfm_samples", "berlin", {"mapillary/OpenSfM"}),
    ("raydiffusion_examples", "robot", {"jasonyzhang/RayDiffusion"}),
    ("raydiffusion_examples", "espresso", {"jasonyzhang/RayDiffusion"}),
    ("raydiffusion_examples", "human_toy", {"jasonyzhang/RayDiffusion"}),
    ("strecha_mvs", "castle_p30", {"openMVG/SfM_quality_evaluation"}),
    ("strecha_mvs", "herz_jesu_p25", {"openMVG/SfM_quality_evaluation"}),
    ("strecha_mvs", "fountain_p11", {"openMVG/SfM_quality_evaluation"}),
    ("strecha_mvs", "entry_p10", {"openMVG/SfM_quality_evaluation"}),
    ("alicevision_monstree", "monstree", {"alicevision/dataset_monstree"}),
    ("openmvg_sceaux_castle", "sceaux_castle", {"openMVG/ImageDataset_SceauxCastle"}),
]

EXCLUDED_REPOS = {"magicleap/SuperGluePretrainedNetwork", "NVlabs/instant-ngp", "naver/mast3r"}

LABEL_COLUMNS = ["dataset", "scene", "image", "rotation_matrix", "translation_vector"]


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def jpeg_name(name):
    p = Path(name)
    return name if p.suffix.lower() in (".jpg", ".jpeg") else p.stem + ".jpg"


def select(labels, sources, cap, seed):
    """Return the selected label rows (sorted), each joined with its source row."""
    src_by_key = {(r["dataset"], r["image"]): r for r in sources}
    rng = random.Random(seed)
    selected = []
    for dataset, scene, repos in SELECTION:
        rows = []
        for r in labels:
            if r["dataset"] != dataset or r["scene"] != scene:
                continue
            s = src_by_key[(dataset, r["image"])]
            repo = s["source_repository"]
            if repo in EXCLUDED_REPOS or repo not in repos:
                continue
            rows.append((r, s))
        rows.sort(key=lambda rs: rs[0]["image"])
        if len(rows) > cap:
            rows = sorted(rng.sample(rows, cap), key=lambda rs: rs[0]["image"])
        if len(rows) < 2:
            raise SystemExit(f"scene {dataset}/{scene} has {len(rows)} images (< 2)")
        selected.extend(rows)
    selected.sort(key=lambda rs: (rs[0]["dataset"], rs[0]["scene"], rs[0]["image"]))
    return selected


def convert(src_path, dst_path, max_side, quality):
    with Image.open(src_path) as im:
        im = ImageOps.exif_transpose(im)
        im = im.convert("RGB")
        w, h = im.size
        scale = min(1.0, max_side / max(w, h))
        if scale < 1.0:
            new = (max(1, round(w * scale)), max(1, round(h * scale)))
            im = im.resize(new, Image.LANCZOS)
        im.save(dst_path, "JPEG", quality=quality)
        return (w, h), im.size


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, type=Path, help="shared data root (train/, train_labels.csv, sources.csv)")
    ap.add_argument("--out", default=Path("data/sample"), type=Path, help="output root (default: data/sample)")
    ap.add_argument("--max-side", default=640, type=int, help="max long side in px (default: 640)")
    ap.add_argument("--quality", default=85, type=int, help="JPEG quality (default: 85)")
    ap.add_argument("--seed", default=0, type=int, help="subsampling seed (default: 0)")
    ap.add_argument("--cap", default=12, type=int, help="max images per scene (default: 12)")
    args = ap.parse_args()

    _, labels = read_csv(args.src / "train_labels.csv")
    src_fields, sources = read_csv(args.src / "sources.csv")
    selected = select(labels, sources, args.cap, args.seed)

    train_out = args.out / "train"
    if train_out.exists():
        shutil.rmtree(train_out)

    out_labels, out_sources, seen = [], [], set()
    for lab, src in selected:
        name = jpeg_name(lab["image"])
        key = (lab["dataset"], name)
        if key in seen:
            raise SystemExit(f"name clash after renaming: {key}")
        seen.add(key)
        dst = train_out / lab["dataset"] / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (w, h), (nw, nh) = convert(args.src / "train" / lab["dataset"] / lab["image"], dst, args.max_side, args.quality)
        out_labels.append({**{c: lab[c] for c in LABEL_COLUMNS}, "image": name})
        out_sources.append({**src, "image": name,
                            "sample_resized": f"{w}x{h} -> {nw}x{nh} JPEG q{args.quality}"})

    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "train_labels.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=LABEL_COLUMNS, lineterminator="\n")
        wr.writeheader()
        wr.writerows(out_labels)
    with open(args.out / "sources.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(src_fields) + ["sample_resized"], lineterminator="\n")
        wr.writeheader()
        wr.writerows(out_sources)

    scenes = {}
    for r in out_labels:
        scenes[(r["dataset"], r["scene"])] = scenes.get((r["dataset"], r["scene"]), 0) + 1
    for (d, s), n in sorted(scenes.items()):
        print(f"{d}/{s}: {n}")
    print(f"{len(out_labels)} images in {len(scenes)} scenes -> {args.out}")


if __name__ == "__main__":
    main()
