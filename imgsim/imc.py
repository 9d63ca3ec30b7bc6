"""The Image Matching Challenge 2025 score: camera registration mAA and clusterness.

Follows the official Kaggle metric ``imc25`` ``metric.py`` ("IMC 2025 metric",
F. Bellavia and E. Trulls; copy read: GitHub ``BracedHornet186/MLOps-Project-ME22B214``
``utils/imc25/metric.py``), defaults ``inl_cf=0, strict_cf=-1,
skip_top_thresholds=2, to_dec=3, combo_mode='harmonic'``:

* centre ``c = -R^T t``; a non-finite value in R or t = unregistered image;
* per (ground-truth scene, predicted cluster) pair the scene's submitted centres
  in the cluster are registered to the ground truth by Horn's closed form
  (unit quaternion, scale = ratio of RMS spreads about the centroids) on every
  camera triplet, refitted on the triplet's inliers (distance < threshold) if
  >= 3; per threshold the refit with most inliers wins (ties: least sum of
  squared distances); with ``r`` thresholds, the first 2 skipped (``lt = r - 2``),
  and ``k_j`` cameras within threshold ``j``: pair mAA =
  ``sum_j max(0, k_j - 3) / (lt (m - 3))``, ``m`` = cameras of the scene;
* a scene matches the cluster sharing most of its images (ties: higher mAA,
  then first in the submission); two scenes may match one cluster;
* dataset mAA = ``sum of numerators / sum_s lt_s (m_s - 3)``; clusterness =
  ``sum |scene & cluster| / sum |cluster|`` over matched pairs (all images of
  the cluster count, ground-truth outliers included); dataset score = harmonic
  mean (0 if both are 0); final = 100 x mean over datasets;
* scene ``outliers`` is no scene in the ground truth, no cluster in a
  submission, which needs one row per image of every ground-truth dataset.

Deviations: ground-truth images with a NaN pose are left out of registration
and of ``m`` (official: counted in ``m``) but count for clusterness; a scene
sharing no image with any cluster matches none and adds ``lt (m - 3)`` to the
denominator (official: may match ``outliers``, then ``m = 0``); above
``max_triplets`` triplets (n > 50 cameras) a seeded sample replaces all
``C(n, 3)``; a scene without a thresholds row uses ``DEFAULT_FRACTIONS`` x the
median distance of its ground-truth centres to their centroid (Kaggle's example
``0.025 .. 1.0`` m over a 10 m radius), so ``lt_s`` may differ per scene
(official: one length).  Outputs are in [0, 1] except the top-level ``score`` (%).
"""

import itertools
import math
import os

import numpy as np
import pandas as pd

from imgsim.errors import DataLayoutError

__all__ = ["camera_centres", "horn_similarity", "register_by_ransac", "mAA",
           "default_thresholds", "read_submission", "read_thresholds", "score"]

OUTLIERS = "outliers"
DEFAULT_FRACTIONS = (0.0025, 0.005, 0.01, 0.02, 0.05, 0.1)
SKIP_THRESHOLDS = 2  # official skip_top_thresholds
TO_DEC = 3  # official to_dec: cameras used to fit a model score nothing
MAX_TRIPLETS = 20000
_GT_COLUMNS = ("dataset", "scene", "image", "rotation_matrix", "translation_vector")


def camera_centres(R, t):
    """Camera centres ``c = -R^T t``.

    Parameters
    ----------
    R : array-like of shape (..., 3, 3)
        World-to-camera rotations (``x_cam = R x_world + t``).
    t : array-like of shape (..., 3)
        World-to-camera translations.

    Returns
    -------
    c : ndarray of shape (..., 3)
        Centres in world units; NaN wherever R or t has a non-finite value.
    """
    R, t = np.asarray(R, dtype=float), np.asarray(t, dtype=float)
    if R.shape[-2:] != (3, 3) or t.shape[-1:] != (3,) or R.shape[:-2] != t.shape[:-1]:
        raise ValueError(f"R must be (..., 3, 3) and t (..., 3), got {R.shape} and {t.shape}")
    c = -np.einsum("...ji,...j->...i", R, t)
    c[~(np.isfinite(R).all((-1, -2)) & np.isfinite(t).all(-1))] = np.nan
    return c


def _horn(src, dst, w):
    """Batched weighted Horn: src, dst (B, n, 3), w (B, n) -> s (B,), R (B, 3, 3), t (B, 3)."""
    w = w / w.sum(-1, keepdims=True)
    mu_s, mu_d = np.einsum("bn,bnk->bk", w, src), np.einsum("bn,bnk->bk", w, dst)
    a, b = src - mu_s[:, None], dst - mu_d[:, None]
    S = np.matmul((w[..., None] * a).transpose(0, 2, 1), b)  # S[i, j] = sum a_i b_j
    xx, xy, xz, yx, yy, yz, zx, zy, zz = S.reshape(-1, 9).T
    N = np.stack([xx + yy + zz, yz - zy, zx - xz, xy - yx,
                  yz - zy, xx - yy - zz, xy + yx, zx + xz,
                  zx - xz, xy + yx, yy - xx - zz, yz + zy,
                  xy - yx, zx + xz, yz + zy, zz - xx - yy], -1).reshape(-1, 4, 4)
    q0, qx, qy, qz = np.linalg.eigh(N)[1][:, :, -1].T  # eigenvector of largest eigenvalue
    R = np.stack([q0**2 + qx**2 - qy**2 - qz**2, 2 * (qx*qy - q0*qz), 2 * (qx*qz + q0*qy),
                  2 * (qy*qx + q0*qz), q0**2 - qx**2 + qy**2 - qz**2, 2 * (qy*qz - q0*qx),
                  2 * (qz*qx - q0*qy), 2 * (qz*qy + q0*qx), q0**2 - qx**2 - qy**2 + qz**2],
                 -1).reshape(-1, 3, 3)
    with np.errstate(divide="ignore", invalid="ignore"):  # no spread: s = inf or nan
        s = np.sqrt(np.einsum("bn,bnk->b", w, b**2) / np.einsum("bn,bnk->b", w, a**2))
        return s, R, mu_d - s[:, None] * np.einsum("bij,bj->bi", R, mu_s)


def horn_similarity(src, dst):
    """Similarity ``dst ~ s R src + t`` by Horn's closed form (1987, with scale).

    Parameters
    ----------
    src, dst : array-like of shape (n, 3)
        Corresponding finite points, ``n >= 3``.

    Returns
    -------
    s : float
        Ratio of the RMS distances of dst and src to their centroids.
    R : ndarray of shape (3, 3)
        Rotation maximising ``sum (dst_i - mean(dst)) . R (src_i - mean(src))``.
    t : ndarray of shape (3,)
        ``mean(dst) - s R mean(src)``.
    """
    src, dst = np.asarray(src, dtype=float), np.asarray(dst, dtype=float)
    if (src.ndim != 2 or src.shape[1] != 3 or src.shape != dst.shape or len(src) < 3
            or not (np.isfinite(src).all() and np.isfinite(dst).all())):
        raise ValueError(f"src and dst must be finite (n >= 3, 3), got {src.shape}, {dst.shape}")
    s, R, t = _horn(src[None], dst[None], np.ones((1, len(src))))
    return float(s[0]), R[0], t[0]


def _triplets(n, max_triplets, seed):
    if math.comb(n, 3) <= max_triplets:
        return np.array(list(itertools.combinations(range(n), 3)))
    rng, found = np.random.default_rng(seed), np.empty((0, 3), dtype=int)
    while len(found) < max_triplets:
        draw = np.sort(rng.integers(0, n, (2 * max_triplets, 3)), axis=1)
        draw = draw[(draw[:, 0] < draw[:, 1]) & (draw[:, 1] < draw[:, 2])]
        found = np.unique(np.concatenate([found, draw]), axis=0)
    return rng.permutation(found)[:max_triplets]


def _sq_err(s, R, t, src, dst):
    with np.errstate(invalid="ignore", over="ignore"):
        moved = s[:, None, None] * (src @ R.transpose(0, 2, 1)) + t[:, None]
        return np.sum((moved - dst) ** 2, axis=-1)  # (B, n)


def register_by_ransac(src, dst, thresholds, max_triplets=MAX_TRIPLETS, seed=0, chunk=2048):
    """Register predicted camera centres to ground truth, one best model per threshold.

    Parameters
    ----------
    src, dst : array-like of shape (n, 3)
        Predicted and ground-truth centres; rows with a non-finite value are skipped.
    thresholds : array-like of shape (r,)
        Inlier distances, in ground-truth units.
    max_triplets, seed : int
        All triplets when ``C(n_valid, 3) <= max_triplets``, else that many
        drawn by ``numpy.random.default_rng(seed)``.

    Returns
    -------
    err : ndarray of shape (n, r)
        Distance from ``dst[i]`` to ``src[i]`` mapped by the best model for
        threshold ``j``; ``inf`` for skipped rows or with < 3 usable rows.
    """
    src, dst = np.asarray(src, dtype=float), np.asarray(dst, dtype=float)
    th2 = np.asarray(thresholds, dtype=float).ravel() ** 2
    err = np.full((len(src), len(th2)), np.inf)
    idx = np.flatnonzero(np.isfinite(src).all(1) & np.isfinite(dst).all(1))
    if len(idx) < 3:
        return err
    P, Q, k = src[idx], dst[idx], len(idx)
    trip = _triplets(k, max_triplets, seed)
    sets = []
    for part in np.array_split(trip, -(-len(trip) // chunk)):
        d2 = _sq_err(*_horn(P[part], Q[part], np.ones(part.shape)), P, Q)
        inl = (d2[:, None, :] < th2[None, :, None]).reshape(-1, k)
        sets.append(np.unique(np.packbits(inl[inl.sum(1) > 2], axis=1), axis=0))
    sets = np.unpackbits(np.unique(np.concatenate(sets), axis=0), axis=1, count=k)
    best_n, best_sum, best_d2 = np.full(len(th2), -1), np.full(len(th2), np.inf), err[idx]
    for part in np.array_split(sets, -(-len(sets) // chunk)) if len(sets) else []:
        shape = (len(part), k, 3)  # refit on each distinct inlier set, all thresholds at once
        d2 = _sq_err(*_horn(np.broadcast_to(P, shape), np.broadcast_to(Q, shape), part.astype(float)), P, Q)
        total = np.nan_to_num(d2.sum(1), nan=np.inf)
        count = (d2[:, :, None] < th2).sum(1)
        for j in range(len(th2)):
            b = np.lexsort((total, -count[:, j]))[0]
            if count[b, j] > best_n[j] or (count[b, j] == best_n[j] and total[b] < best_sum[j]):
                best_n[j], best_sum[j], best_d2[:, j] = count[b, j], total[b], d2[b]
    err[idx] = np.sqrt(best_d2)
    return err


def _maa_terms(err, thresholds, n):
    kept = np.asarray(thresholds, dtype=float)[SKIP_THRESHOLDS:]
    hits = (np.asarray(err)[:, SKIP_THRESHOLDS:] < kept).sum(0)
    return float(np.maximum(hits - TO_DEC, 0).sum()), len(kept) * (n - TO_DEC)


def mAA(err, thresholds, n):
    """Mean average accuracy of registered cameras (official ``mAA_on_cameras``):

    ``sum_j max(0, #{err[:, j] < thresholds[j]} - 3) / ((r - 2) (n - 3))`` over
    thresholds ``j >= 2`` (the first ``SKIP_THRESHOLDS`` are ignored), 0 when
    the numerator is 0.  ``err`` is (n_cams, r) from :func:`register_by_ransac`,
    ``n`` the number of ground-truth cameras of the scene.
    """
    num, den = _maa_terms(err, thresholds, n)
    return num / den if num > 0 else 0.0


def default_thresholds(centres):
    """``DEFAULT_FRACTIONS x`` median distance of the finite centres (m, 3) to their centroid."""
    c = np.asarray(centres, dtype=float).reshape(-1, 3)
    c = c[np.isfinite(c).all(1)]
    d = np.median(np.linalg.norm(c - c.mean(0), axis=1)) if len(c) else 0.0
    return d * np.asarray(DEFAULT_FRACTIONS)


def _load(source, name, columns):
    if isinstance(source, pd.DataFrame):
        df = source.reset_index(drop=True)
    else:
        name = os.path.basename(os.fspath(source))
        try:
            df = pd.read_csv(source, dtype=str, keep_default_na=False)
        except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise DataLayoutError(f"{name}: cannot read as CSV ({type(exc).__name__}: {exc})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataLayoutError(f"{name}: missing column(s) {', '.join(missing)}")
    return df, name


def _numbers(text, size, column, where):
    text = "nan" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    tokens = text.split(";")
    if len(tokens) == 1 and tokens[0].strip().lower() in ("", "nan"):
        return [math.nan] * size
    if len(tokens) != size:
        raise DataLayoutError(f"{where}: {column} has {len(tokens)} values, expected {size}")
    try:
        return [float(x) for x in tokens]
    except ValueError:
        raise DataLayoutError(f"{where}: {column} has a non-numeric value in {text!r}") from None


def _read_poses(source, name):
    df, name = _load(source, name, _GT_COLUMNS)
    R, t = np.empty((len(df), 9)), np.empty((len(df), 3))
    for i, (r_text, t_text) in enumerate(zip(df["rotation_matrix"], df["translation_vector"])):
        R[i] = _numbers(r_text, 9, "rotation_matrix", f"{name} row {i + 2}")
        t[i] = _numbers(t_text, 3, "translation_vector", f"{name} row {i + 2}")
    out = df[["dataset", "scene", "image"]].astype(str).assign(row=np.arange(len(df)) + 2)
    for i in np.flatnonzero(out.duplicated(["dataset", "image"]).to_numpy())[:1]:
        raise DataLayoutError(f"{name} row {i + 2}: image {out['image'][i]!r} of dataset "
                              f"{out['dataset'][i]!r} appears twice")
    out[["cx", "cy", "cz"]] = camera_centres(R.reshape(-1, 3, 3), t)
    return out, name


def read_submission(path):
    """Read ``[image_id,]dataset,scene,image,rotation_matrix,translation_vector``.

    ``path`` may be a DataFrame (errors then name ``submission``); ground truth
    has the same form.  ``scene`` is the cluster.  R is 9 ``;``-joined values
    (row-major), t 3; ``nan`` or an empty cell = all NaN.  Returns a DataFrame:
    dataset, scene, image, row (data row + 1: the file line, header = line 1)
    and cx, cy, cz (centre, NaN = no pose).  Raises :class:`DataLayoutError`.
    """
    return _read_poses(path, "submission")[0]


def read_thresholds(path):
    """Read ``dataset,scene,thresholds`` (``;``-joined floats) into {(dataset, scene): (r,) array}."""
    df, name = _load(path, "thresholds", ("dataset", "scene", "thresholds"))
    out = {}
    for i, (ds, sc, text) in enumerate(zip(df["dataset"], df["scene"], df["thresholds"])):
        values = _numbers(text, str(text).count(";") + 1, "thresholds", f"{name} row {i + 2}")
        if len(values) <= SKIP_THRESHOLDS or not np.isfinite(values).all():
            raise DataLayoutError(f"{name} row {i + 2}: thresholds needs more than "
                                  f"{SKIP_THRESHOLDS} finite values, got {text!r}")
        out[(str(ds), str(sc))] = np.asarray(values)
    return out


def _check_against(gt, sub, name):
    known = set(zip(gt["dataset"], gt["image"]))
    for ds, image, row in zip(sub["dataset"], sub["image"], sub["row"]):
        if (ds, image) not in known:
            raise DataLayoutError(f"{name} row {row}: image {image!r} is not in the ground "
                                  f"truth of dataset {ds!r}")
    for ds, images in gt.groupby("dataset", sort=False)["image"]:
        lacking = sorted(set(images) - set(sub.loc[sub["dataset"] == ds, "image"]))
        if lacking and ds not in set(sub["dataset"]):
            raise DataLayoutError(f"{name}: dataset {ds!r} is missing")
        if lacking:
            raise DataLayoutError(f"{name}: dataset {ds!r} lacks {len(lacking)} ground-truth "
                                  f"image(s), e.g. {lacking[0]!r}")


def _score_dataset(ds, g, sub, thresholds, max_triplets, seed):
    sub = sub.set_index("image")
    size = sub["scene"][sub["scene"] != OUTLIERS].value_counts()
    order = [c for c in pd.unique(sub["scene"]) if c != OUTLIERS]  # breaks the last ties
    num = den = inter = union = 0.0
    scenes = {}
    for sc, gs in g[g["scene"] != OUTLIERS].groupby("scene", sort=False):
        gc, pc = gs[["cx", "cy", "cz"]].to_numpy(), sub.loc[gs["image"], ["cx", "cy", "cz"]].to_numpy()
        in_cl, posed = sub.loc[gs["image"], "scene"].to_numpy(), np.isfinite(gc).all(1)
        th, m = thresholds.get((ds, sc), default_thresholds(gc)), int(posed.sum())
        den += (len(th) - SKIP_THRESHOLDS) * (m - TO_DEC)
        shared = {c: int(np.sum(in_cl == c)) for c in order}
        most = max(shared.values(), default=0)
        best = {"maa": 0.0, "clusterness": 0.0, "cluster": None, "shared": 0, "registered": 0,
                "total": len(gs)}
        for c in (c for c in order if most and shared[c] == most):
            sel = (in_cl == c) & posed
            n_ok, d = _maa_terms(register_by_ransac(pc[sel], gc[sel], th, max_triplets, seed), th, m)
            if best["cluster"] is None or (n_ok > 0 and n_ok / d > best["maa"]):
                best_num = n_ok
                best.update(maa=n_ok / d if n_ok > 0 else 0.0, clusterness=most / size[c], cluster=c,
                            shared=most, registered=int(np.isfinite(pc[in_cl == c]).all(1).sum()))
        if best["cluster"] is not None:
            num, inter, union = num + best_num, inter + most, union + size[best["cluster"]]
        scenes[sc] = best
    maa = num / den if num > 0 and den > 0 else 0.0
    clusterness = inter / union if union else 0.0
    total = 2 * maa * clusterness / (maa + clusterness) if maa + clusterness else 0.0
    return {"maa": maa, "clusterness": clusterness, "score": total, "scenes": scenes}


def score(gt_csv, submission_csv, thresholds_csv=None, *, max_triplets=MAX_TRIPLETS, seed=0):
    """The IMC 2025 score of a submission.

    Parameters
    ----------
    gt_csv, submission_csv : path or DataFrame
        See :func:`read_submission`; one submission row per ground-truth image.
    thresholds_csv : path or DataFrame, optional
        :func:`read_thresholds`; scenes without a row use :func:`default_thresholds`.
    max_triplets, seed : int
        See :func:`register_by_ransac`.

    Returns
    -------
    dict
        ``{"score": percent, "datasets": {dataset: {"maa", "clusterness", "score",
        "scenes": {scene: {"maa", "clusterness" (shared / |cluster|), "cluster"
        (None: no match), "shared", "registered" (shared with a finite pose),
        "total" (images of the scene)}}}}}``.

    Raises
    ------
    DataLayoutError
        Malformed file, unknown or duplicate image, missing dataset or image.
    """
    gt, _ = _read_poses(gt_csv, "ground truth")
    sub, name = _read_poses(submission_csv, "submission")
    thresholds = {} if thresholds_csv is None else read_thresholds(thresholds_csv)
    _check_against(gt, sub, name)
    datasets = {ds: _score_dataset(ds, g, sub[sub["dataset"] == ds], thresholds, max_triplets, seed)
                for ds, g in gt.groupby("dataset", sort=False)}
    final = 100 * float(np.mean([d["score"] for d in datasets.values()])) if datasets else 0.0
    return {"score": final, "datasets": datasets}
