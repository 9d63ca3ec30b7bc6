"""The Image Matching Challenge 2025 score: camera registration mAA and clusterness.

Two rules. ``official=True`` reproduces the hosts' metric code, ``metric.py`` of
the Kaggle dataset ``imc25-utils`` (version 6; copy read: GitHub
``yangyefd/IMC2025`` ``imc25-utils/versions/6/metric.py``), with its defaults
``inl_cf=0, strict_cf=-1, skip_top_thresholds=2, to_dec=3, combo_mode='harmonic'``,
quirks included. The default keeps the same registration and accuracy but
fixes what that code gets wrong. Both rules:

* centre ``c = -R^T t``; a non-finite value in R or t = unregistered image;
* a scene's submitted centres in a cluster are registered to the ground truth
  by a similarity fitted on every camera triplet (Horn's unit quaternion,
  scale = ratio of RMS spreads about the centroids), then refitted (Kabsch SVD,
  same scale) on each distinct inlier set (distance < threshold, > 2 members);
  per threshold the refit with most inliers counts; with ``r`` thresholds of
  which the first 2 are skipped (``lt = r - 2``) and ``k_j`` cameras within
  threshold ``j``, the numerator of the pair is ``sum_j max(0, k_j - 3)``;
* a scene matches the cluster sharing most of its images (ties: larger
  numerator, then first in the submission's row order); two scenes may match
  one cluster; clusterness = ``sum shared / sum |cluster|`` over matched scenes
  (every image of the cluster counts, ground-truth outliers included);
* dataset score = harmonic mean of mAA and clusterness (0 if both are 0);
  final = 100 x mean over datasets; scene ``outliers`` is no scene in the
  ground truth and no cluster in a submission.

Default rule (``official=False``), the deviations from the official code, each
with its reason:

1. mAA = ``sum num_s / sum_s lt_s (m_s - 3)`` over scenes with ``m_s >= 3``
   posed images (official: ``max(0, lt (sum_s m_s - 3 S))`` over all S scenes,
   so a scene of 1 or 2 images subtracts from the denominator and mAA can
   exceed 1).
2. ``m_s`` counts posed ground-truth images only; unposed ones still count for
   clusterness (official: every image counts in ``m_s``, and a submission
   posing such an image as one of >= 3 in a cluster makes the official code
   fail with ``LinAlgError``: an image without a true pose cannot be scored).
3. A scene sharing no image with any cluster matches none: it adds its
   ``lt (m - 3)`` to the mAA denominator and nothing to clusterness (official:
   it matches whatever scene comes first in the submission's rows; if that is
   ``outliers`` it counts ``m = 0``, lowering the denominator by ``3 lt``, so
   writing outliers first raises the score; otherwise that cluster's size is
   added to the clusterness denominator).
4. A dataset without a scene of more than 3 posed images has no mAA: it is
   left out of the mean, with a warning (official: scored 0 and averaged in).
5. Without a thresholds row, a scene uses ``DEFAULT_FRACTIONS`` x the median
   distance of its true centres to their centroid (Kaggle's example
   ``0.025 .. 1.0`` m over a 10 m radius), and ``lt_s`` may differ per scene
   (official: a row for every scene, one length for all, else it fails).
6. Above ``max_triplets`` triplets (n > 50 cameras) a seeded sample replaces
   all ``C(n, 3)`` (official: all; hours in its Python loops at n = 200).

Both rules refuse what the official code crashes on or silently mis-scores
(:class:`DataLayoutError` naming the file and row): an empty ground truth
(official: NaN), blank dataset/scene/image labels, a row with missing fields,
duplicate images (official: the last row wins within a scene), images or
datasets not in the ground truth (official: extra datasets ignored),
thresholds that are not positive and finite or fewer than 3. ``official=True``
also refuses a submission cell the official reader cannot parse (a bare
``nan`` or an empty cell: 9 and 3 ``;``-joined values are needed, as in
Kaggle's ``sample_submission.csv``), uses all triplets, reports every quirk
that changes its number as a :class:`ScoreWarning`, and where the official
code would fail goes on and warns (a scene without a thresholds row gets the
defaults; a posed image without a true pose is never within a threshold). Its
fits follow the official formulas in vectorised form, so a decision can differ
only where an error lies within rounding of a threshold. A bare ``nan`` in the
ground truth (as in ``train_labels.csv``) is read as no pose by both rules.
Outputs are in [0, 1] except the top-level ``score`` (%).
"""

import csv
import itertools
import math
import os
import warnings

import numpy as np
import pandas as pd

from imgsim.errors import DataLayoutError

__all__ = ["ScoreWarning", "camera_centres", "horn_similarity", "register_by_ransac", "mAA",
           "default_thresholds", "read_submission", "read_thresholds", "score"]

OUTLIERS = "outliers"
DEFAULT_FRACTIONS = (0.0025, 0.005, 0.01, 0.02, 0.05, 0.1)
SKIP_THRESHOLDS = 2  # official skip_top_thresholds
TO_DEC = 3  # official to_dec: cameras used to fit a model score nothing
MAX_TRIPLETS = 20000
_GT_COLUMNS = ("dataset", "scene", "image", "rotation_matrix", "translation_vector")
_LABELS = ("dataset", "scene", "image")


class ScoreWarning(UserWarning):
    """A scene or dataset the chosen rule leaves out or scores by one of the official code's quirks."""


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
    with np.errstate(invalid="ignore", over="ignore"):
        c = -np.einsum("...ji,...j->...i", R, t)
    c[~(np.isfinite(R).all((-1, -2)) & np.isfinite(t).all(-1))] = np.nan
    return c


# --------------------------------------------------------------------------- similarity fits


def _moments(src, dst, w):
    """Batched: centroids (B, 3), cross-covariance S[i, j] = sum w a_i b_j (B, 3, 3), spread ratio (B,)."""
    total = w.sum(-1)[:, None]
    mu_s, mu_d = (w[:, None] @ src)[:, 0] / total, (w[:, None] @ dst)[:, 0] / total
    a, b = src - mu_s[:, None], dst - mu_d[:, None]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # no spread: s = inf or nan
        S = (a * w[..., None]).transpose(0, 2, 1) @ b
        s = np.sqrt(np.sum(w * np.sum(b * b, -1), -1) / np.sum(w * np.sum(a * a, -1), -1))
    return mu_s, mu_d, S, s


def _subset_moments(P, Q, W):
    """:func:`_moments` of B subsets (0/1 rows of W, (B, n)) of the points P, Q (n, 3), by matrix products."""
    total = W.sum(-1)
    mu_s, mu_d = W @ P / total[:, None], W @ Q / total[:, None]
    S = (W @ (P[:, :, None] * Q[:, None, :]).reshape(-1, 9)).reshape(-1, 3, 3)
    S -= total[:, None, None] * mu_s[:, :, None] * mu_d[:, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):  # no spread: s = inf or nan
        spread_s = W @ np.sum(P * P, 1) - total * np.sum(mu_s * mu_s, 1)
        spread_d = W @ np.sum(Q * Q, 1) - total * np.sum(mu_d * mu_d, 1)
        s = np.sqrt(np.maximum(spread_d, 0) / np.where(spread_s > 0, spread_s, 0))
    return mu_s, mu_d, S, s


def _rotation_horn(S):
    """Horn's rotation: the unit quaternion of N's largest eigenvalue (first of ties, as ``argmax``)."""
    xx, xy, xz, yx, yy, yz, zx, zy, zz = S.reshape(-1, 9).T
    N = np.stack([xx + yy + zz, yz - zy, zx - xz, xy - yx,
                  yz - zy, xx - yy - zz, xy + yx, zx + xz,
                  zx - xz, xy + yx, yy - xx - zz, yz + zy,
                  xy - yx, zx + xz, yz + zy, zz - xx - yy], -1).reshape(-1, 4, 4)
    R = np.full((len(S), 3, 3), np.nan)
    ok = np.isfinite(N).all((1, 2))
    if ok.any():
        values, vectors = np.linalg.eigh(N[ok])
        q = np.take_along_axis(vectors, values.argmax(-1)[:, None, None], axis=2)[..., 0]
        q = q * np.sqrt(2.0 / np.sum(q * q, -1, keepdims=True))
        Q = q[:, :, None] * q[:, None, :]  # 2 q q^T, the official quaternion_matrix
        R[ok] = np.stack([1 - Q[:, 2, 2] - Q[:, 3, 3], Q[:, 1, 2] - Q[:, 3, 0], Q[:, 1, 3] + Q[:, 2, 0],
                          Q[:, 1, 2] + Q[:, 3, 0], 1 - Q[:, 1, 1] - Q[:, 3, 3], Q[:, 2, 3] - Q[:, 1, 0],
                          Q[:, 1, 3] - Q[:, 2, 0], Q[:, 2, 3] + Q[:, 1, 0], 1 - Q[:, 1, 1] - Q[:, 2, 2]],
                         -1).reshape(-1, 3, 3)
    return R


def _rotation_kabsch(S):
    """Kabsch's rotation ``U V^T`` of ``sum b a^T = U Sigma V^T``, its last axis flipped if a reflection."""
    R = np.full((len(S), 3, 3), np.nan)
    ok = np.isfinite(S).all((1, 2))
    if ok.any():
        u, _, vh = np.linalg.svd(S[ok].transpose(0, 2, 1))
        r = u @ vh
        flip = np.linalg.det(r) < 0
        r[flip] -= 2 * u[flip][:, :, 2, None] * vh[flip][:, None, 2, :]
        R[ok] = r
    return R


def _fit(src, dst, w, rotation):
    """Batched similarity ``x -> s R (x - mu_s) + mu_d``: (mu_s, mu_d, R, s)."""
    mu_s, mu_d, S, s = _moments(src, dst, w)
    return mu_s, mu_d, rotation(S), s


def _sq_err(model, src, dst):
    """Squared distances (B, n) from ``dst`` to the B models applied to ``src`` (n, 3)."""
    mu_s, mu_d, R, s = model
    with np.errstate(invalid="ignore", over="ignore"):
        A = s[:, None, None] * R
        moved = src @ A.transpose(0, 2, 1) + (mu_d - np.einsum("bij,bj->bi", A, mu_s))[:, None] - dst
        return np.sum(moved * moved, axis=-1)


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
    mu_s, mu_d, R, s = _fit(src[None], dst[None], np.ones((1, len(src))), _rotation_horn)
    return float(s[0]), R[0], mu_d[0] - s[0] * R[0] @ mu_s[0]


# --------------------------------------------------------------------------- registration


def _triplet_chunks(n, max_triplets, seed, chunk):
    """Index triplets (m, 3) in chunks: all ``C(n, 3)`` in order, or a seeded sample of ``max_triplets``."""
    if max_triplets is None or math.comb(n, 3) <= max_triplets:
        every = itertools.combinations(range(n), 3)
        while block := list(itertools.islice(every, chunk)):
            yield np.array(block)
        return
    rng, found = np.random.default_rng(seed), np.empty((0, 3), dtype=int)
    while len(found) < max_triplets:
        draw = np.sort(rng.integers(0, n, (2 * max_triplets, 3)), axis=1)
        draw = draw[(draw[:, 0] < draw[:, 1]) & (draw[:, 1] < draw[:, 2])]
        found = np.unique(np.concatenate([found, draw]), axis=0)
    yield from np.array_split(rng.permutation(found)[:max_triplets], -(-max_triplets // chunk))


def _unique_rows(packed):
    """Distinct rows of a uint8 array (m, b), by sorting them as one opaque value each."""
    packed = np.ascontiguousarray(packed)
    width = packed.shape[1]
    return np.unique(packed.view(np.dtype((np.void, width)))).view(np.uint8).reshape(-1, width)


def register_by_ransac(src, dst, thresholds, max_triplets=MAX_TRIPLETS, seed=0, chunk=2048):
    """Register predicted camera centres to ground truth, one best model per threshold.

    Parameters
    ----------
    src, dst : array-like of shape (n, 3)
        Predicted and ground-truth centres; rows with a non-finite value are skipped.
    thresholds : array-like of shape (r,)
        Inlier distances, in ground-truth units.
    max_triplets, seed : int or None
        All triplets when ``max_triplets`` is None or ``C(n_valid, 3) <=
        max_triplets`` (the official code: always all), else that many drawn
        by ``numpy.random.default_rng(seed)``.

    Returns
    -------
    err : ndarray of shape (n, r)
        Distance from ``dst[i]`` to ``src[i]`` mapped by the model with most
        inliers for threshold ``j`` (ties: least sum of squared distances; the
        counts, and so the score, do not depend on ties); ``inf`` for skipped
        rows or with < 3 usable rows.
    """
    src, dst = np.asarray(src, dtype=float), np.asarray(dst, dtype=float)
    th2 = np.asarray(thresholds, dtype=float).ravel() ** 2
    err = np.full((len(src), len(th2)), np.inf)
    idx = np.flatnonzero(np.isfinite(src).all(1) & np.isfinite(dst).all(1))
    if len(idx) < 3:
        return err
    P, Q, k = src[idx] - src[idx].mean(0), dst[idx] - dst[idx].mean(0), len(idx)  # errors do not change
    sets = []
    for part in _triplet_chunks(k, max_triplets, seed, chunk):
        d2 = _sq_err(_fit(P[part], Q[part], np.ones(part.shape), _rotation_horn), P, Q)
        inl = (d2[:, None, :] < th2[None, :, None]).reshape(-1, k)
        sets.append(_unique_rows(np.packbits(inl[inl.sum(1) > 2], axis=1)))
    sets = np.unpackbits(_unique_rows(np.concatenate(sets)), axis=1, count=k)
    best_n, best_sum, best_d2 = np.full(len(th2), -1), np.full(len(th2), np.inf), err[idx]
    for part in np.array_split(sets, -(-len(sets) // chunk)) if len(sets) else []:
        mu_s, mu_d, S, s = _subset_moments(P, Q, part.astype(float))  # refit on each distinct inlier set
        d2 = _sq_err((mu_s, mu_d, _rotation_kabsch(S), s), P, Q)
        total = np.nan_to_num(d2.sum(1), nan=np.inf)
        count = (d2[:, :, None] < th2).sum(1)
        for j in range(len(th2)):
            b = np.lexsort((total, -count[:, j]))[0]
            if count[b, j] > best_n[j] or (count[b, j] == best_n[j] and total[b] < best_sum[j]):
                best_n[j], best_sum[j], best_d2[:, j] = count[b, j], total[b], d2[b]
    err[idx] = np.sqrt(best_d2)
    return err


def _numerator(err, thresholds):
    """``sum_j max(0, #{err[:, j] < thresholds[j]} - 3)`` over thresholds ``j >= 2``."""
    kept = np.asarray(thresholds, dtype=float)[SKIP_THRESHOLDS:]
    hits = (np.asarray(err)[:, SKIP_THRESHOLDS:] < kept).sum(0)
    return int(np.maximum(hits - TO_DEC, 0).sum())


def mAA(err, thresholds, n):
    """Mean average accuracy of registered cameras (official ``mAA_on_cameras``):

    ``sum_j max(0, #{err[:, j] < thresholds[j]} - 3) / ((r - 2) (n - 3))`` over
    thresholds ``j >= 2`` (the first ``SKIP_THRESHOLDS`` are ignored), 0 when
    the numerator is 0.  ``err`` is (n_cams, r) from :func:`register_by_ransac`,
    ``n`` the number of ground-truth cameras of the scene.
    """
    num = _numerator(err, thresholds)
    return num / ((len(thresholds) - SKIP_THRESHOLDS) * (n - TO_DEC)) if num > 0 else 0.0


def default_thresholds(centres):
    """``DEFAULT_FRACTIONS x`` median distance of the finite centres (m, 3) to their centroid."""
    c = np.asarray(centres, dtype=float).reshape(-1, 3)
    c = c[np.isfinite(c).all(1)]
    d = np.median(np.linalg.norm(c - c.mean(0), axis=1)) if len(c) else 0.0
    return d * np.asarray(DEFAULT_FRACTIONS)


# --------------------------------------------------------------------------- reading


def _read_rows(path, name):
    """A CSV file as text cells, split as the official reader does (``csv.reader``), and each row's line."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            records = [(f_line, row) for f_line, row in _numbered(csv.reader(f)) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataLayoutError(f"{name}: cannot read as CSV ({type(exc).__name__}: {exc})") from None
    if not records:
        raise DataLayoutError(f"{name}: cannot read as CSV (empty file)")
    header = records[0][1]
    for column in {c for c in header if header.count(c) > 1}:
        raise DataLayoutError(f"{name}: the header repeats column {column!r}")
    for line, row in records[1:]:
        if len(row) != len(header):
            raise DataLayoutError(f"{name} row {line}: {len(row)} fields, the header has {len(header)}")
    table = pd.DataFrame([row for _, row in records[1:]], columns=header, dtype=str)
    return table, [line for line, _ in records[1:]]


def _numbered(reader):
    for row in reader:
        yield reader.line_num, row


def _load(source, name, columns):
    """(table of text cells, name for errors, file line of each row) of a CSV file or DataFrame."""
    if isinstance(source, pd.DataFrame):
        df, lines = source.reset_index(drop=True), list(range(2, len(source) + 2))
    else:
        name = os.path.basename(os.fspath(source))
        df, lines = _read_rows(source, name)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataLayoutError(f"{name}: missing column(s) {', '.join(missing)}")
    for column in (c for c in columns if c in _LABELS):
        for i in np.flatnonzero((df[column].astype(str).str.strip() == "").to_numpy())[:1]:
            raise DataLayoutError(f"{name} row {lines[i]}: empty {column}")
    return df, name, lines


def _numbers(text, size, column, where, strict=False):
    text = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    tokens = text.split(";")
    bare = len(tokens) == 1 and tokens[0].strip().lower() in ("", "nan")
    if bare and not strict:
        return [math.nan] * size
    if bare:
        raise DataLayoutError(f"{where}: {column} is {text!r}; the official reader (as Kaggle's) needs "
                              f"{size} values, {';'.join(['nan'] * size)} for no pose")
    if len(tokens) != size:
        raise DataLayoutError(f"{where}: {column} has {len(tokens)} values, expected {size}")
    try:
        return [float(x) for x in tokens]
    except ValueError:
        raise DataLayoutError(f"{where}: {column} has a non-numeric value in {text!r}") from None


def _read_poses(source, name, strict=False):
    df, name, lines = _load(source, name, _GT_COLUMNS)
    R, t = np.empty((len(df), 9)), np.empty((len(df), 3))
    for i, (r_text, t_text) in enumerate(zip(df["rotation_matrix"], df["translation_vector"])):
        R[i] = _numbers(r_text, 9, "rotation_matrix", f"{name} row {lines[i]}", strict)
        t[i] = _numbers(t_text, 3, "translation_vector", f"{name} row {lines[i]}", strict)
    out = df[list(_LABELS)].astype(str).assign(row=lines)
    for i in np.flatnonzero(out.duplicated(["dataset", "image"]).to_numpy())[:1]:
        raise DataLayoutError(f"{name} row {lines[i]}: image {out['image'][i]!r} of dataset "
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


def _read_thresholds(path):
    df, name, lines = _load(path, "thresholds", ("dataset", "scene", "thresholds"))
    out = {}
    for line, ds, sc, text in zip(lines, df["dataset"], df["scene"], df["thresholds"]):
        values = np.asarray(_numbers(text, str(text).count(";") + 1, "thresholds", f"{name} row {line}"))
        if len(values) <= SKIP_THRESHOLDS or not (np.isfinite(values) & (values > 0)).all():
            raise DataLayoutError(f"{name} row {line}: thresholds needs more than {SKIP_THRESHOLDS} "
                                  f"positive finite values, got {text!r}")
        if (str(ds), str(sc)) in out:
            raise DataLayoutError(f"{name} row {line}: scene {sc!r} of dataset {ds!r} appears twice")
        out[(str(ds), str(sc))] = values
    return out, name


def read_thresholds(path):
    """Read ``dataset,scene,thresholds`` (>= 3 positive ``;``-joined floats): {(dataset, scene): (r,)}."""
    return _read_thresholds(path)[0]


def _check_against(gt, gt_name, sub, name):
    if gt.empty:
        raise DataLayoutError(f"{gt_name}: no rows, nothing to score")
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


# --------------------------------------------------------------------------- matching and rules


def _match_scenes(ds, g, sub, thresholds, official, max_triplets, seed, warn):
    """Each ground-truth scene's cluster, shared and posed counts, and registration numerator."""
    sub = sub.set_index("image")
    size = sub["scene"].value_counts()
    order = list(pd.unique(sub["scene"]))  # the submission's row order breaks the last ties
    real = [c for c in order if c != OUTLIERS]
    scenes = {}
    for sc, gs in g[g["scene"] != OUTLIERS].groupby("scene", sort=False):
        gc, pc = gs[["cx", "cy", "cz"]].to_numpy(), sub.loc[gs["image"], ["cx", "cy", "cz"]].to_numpy()
        in_cl = sub.loc[gs["image"], "scene"].to_numpy()
        posed, placed = np.isfinite(gc).all(1), np.isfinite(pc).all(1)
        th = thresholds[(ds, sc)]
        shared = {c: int(np.sum(in_cl == c)) for c in real}
        most = max(shared.values(), default=0)
        cluster, num = None, 0
        for c in (c for c in real if most and shared[c] == most):
            n = _numerator(register_by_ransac(pc[(in_cl == c) & posed], gc[(in_cl == c) & posed], th,
                                              None if official else max_triplets, seed), th)
            if cluster is None or n > num:
                cluster, num = c, n
        m = int(posed.sum())
        if official:
            m = len(gs)
            cluster = cluster or _official_fallback(f"{ds}/{sc}", order, size, len(th), warn)
            _warn_official_failure(f"{ds}/{sc}", in_cl, posed, placed, real, warn)
        in_match = in_cl == cluster
        counted = cluster is not None and cluster != OUTLIERS
        scenes[sc] = {"cluster": cluster, "shared": most, "size": int(size[cluster]) if counted else 0,
                      "num": num, "m": 0 if cluster == OUTLIERS else m, "lt": len(th) - SKIP_THRESHOLDS,
                      "registered": int((in_match & placed).sum()) if counted else 0,
                      "posed": int(posed.sum()), "total": len(gs)}
    return scenes


def _official_fallback(where, order, size, r, warn):
    """The official match of a scene sharing no image: the submission's first scene (ties in lexsort)."""
    first = order[0]
    lost = (f"counted with m = 0: the mAA denominator loses {TO_DEC} x {r - SKIP_THRESHOLDS}"
            if first == OUTLIERS else f"its {size[first]} images join the clusterness denominator")
    warn(f"{where}: shares no image with any cluster; the official rule matches it to the submission's "
         f"first scene {first!r} ({lost})")
    return first


def _warn_official_failure(where, in_cl, posed, placed, real, warn):
    """Warn where the official code fails: a pair of >= 3 posed images, one without a true pose."""
    if posed.all():
        return
    for c in real:
        usable = (in_cl == c) & placed
        if usable.sum() >= 3 and (usable & ~posed).any():
            warn(f"{where}: cluster {c!r} poses {int((usable & ~posed).sum())} image(s) without a true pose; "
                 f"the official code fails there (LinAlgError); scored as never within a threshold")


def _harmonic(a, b):
    return 2 * a * b / (a + b) if a + b else 0.0


def _combine_default(ds, scenes, warn):
    """imgsim's rule: mAA over scenes with >= 3 posed images; None (not scored) if its denominator is 0."""
    counted = [s for s in scenes.values() if s["m"] >= TO_DEC]
    num, den = sum(s["num"] for s in counted), sum(s["lt"] * (s["m"] - TO_DEC) for s in counted)
    left = [sc for sc, s in scenes.items() if s["m"] < TO_DEC]
    matched = [s for s in scenes.values() if s["cluster"] is not None]
    union = sum(s["size"] for s in matched)
    clusterness = sum(s["shared"] for s in matched) / union if union else 0.0
    if den == 0:
        warn(f"{ds}: no scene has more than {TO_DEC} posed ground-truth images; mAA is undefined, "
             f"the dataset is left out of the mean")
        return None, clusterness, None
    if left:
        warn(f"{ds}: {len(left)} scene(s) with fewer than {TO_DEC} posed images left out of mAA "
             f"(e.g. {left[0]!r})")
    maa = num / den if num > 0 else 0.0
    return maa, clusterness, _harmonic(maa, clusterness)


def _combine_official(ds, scenes, warn):
    """The official rule: ``max(0, lt (sum m - 3 S))`` over all S scenes; clusterness as matched."""
    lt = next((s["lt"] for s in scenes.values()), 0)
    num = sum(s["num"] for s in scenes.values())
    den = max(0, lt * (sum(s["m"] for s in scenes.values()) - TO_DEC * len(scenes)))
    union = sum(s["size"] for s in scenes.values())
    clusterness = sum(s["shared"] for s in scenes.values()) / union if union else 0.0
    maa = num / den if den else 0.0
    if not any(s["posed"] for s in scenes.values()):
        warn(f"{ds}: no posed ground truth; the official rule scores it 0 and averages it in")
    unposed = {sc: s for sc, s in scenes.items() if 0 < s["posed"] < s["total"]}
    if unposed:
        sc, s = next(iter(unposed.items()))
        warn(f"{ds}: {len(unposed)} scene(s) hold images without a true pose; the official rule counts them "
             f"in the mAA denominator (e.g. {sc!r}: {s['total'] - s['posed']} of {s['total']})")
    small = {sc: s["m"] for sc, s in scenes.items() if s["m"] < TO_DEC and s["cluster"] != OUTLIERS}
    if small:
        sc, m = next(iter(small.items()))
        warn(f"{ds}: {len(small)} scene(s) of fewer than {TO_DEC} images; the official rule adds "
             f"{lt} x (m - {TO_DEC}) < 0 for each to the mAA denominator (e.g. {sc!r}: m = {m})")
    if maa > 1:
        warn(f"{ds}: official mAA {maa:.3f} exceeds 1 (scenes of fewer than {TO_DEC} images)")
    return maa, clusterness, _harmonic(maa, clusterness)


def _thresholds_for(gt, thresholds, name, official, warn):
    """{(dataset, scene): thresholds} for every ground-truth scene, defaults filled in."""
    out, filled = dict(thresholds), []
    for (ds, sc), gs in gt[gt["scene"] != OUTLIERS].groupby(["dataset", "scene"], sort=False):
        if (ds, sc) not in out:
            out[(ds, sc)] = default_thresholds(gs[["cx", "cy", "cz"]].to_numpy())
            filled.append(f"{ds}/{sc}")
    if official:
        lengths = sorted({len(v) for v in out.values()})
        if len(lengths) > 1:
            raise DataLayoutError(f"{name or 'thresholds'}: the official metric needs one number of "
                                  f"thresholds for every scene, got {lengths} (defaults: "
                                  f"{len(DEFAULT_FRACTIONS)})")
        if filled:
            warn(f"{len(filled)} scene(s) without a thresholds row (e.g. {filled[0]}): the official code "
                 f"needs one; imgsim's default thresholds used")
    return out


def score(gt_csv, submission_csv, thresholds_csv=None, *, official=False, max_triplets=MAX_TRIPLETS,
          seed=0):
    """The IMC 2025 score of a submission.

    Parameters
    ----------
    gt_csv, submission_csv : path or DataFrame
        See :func:`read_submission`; one submission row per ground-truth image.
    thresholds_csv : path or DataFrame, optional
        :func:`read_thresholds`; scenes without a row use :func:`default_thresholds`.
    official : bool
        Reproduce the official metric code, quirks included (module docstring),
        each reported as a :class:`ScoreWarning`; default: imgsim's rule.
    max_triplets, seed : int
        See :func:`register_by_ransac` (ignored when ``official``: all triplets).

    Returns
    -------
    dict
        ``{"score": percent, "official": bool, "warnings": [str],
        "datasets": {dataset: {"maa", "clusterness", "score", "scenes": {scene:
        {"maa" (of its cluster, 0 if unmatched), "clusterness" (shared / |cluster|),
        "cluster" (None: no match), "shared", "registered" (shared with a finite
        pose), "posed" (with a true pose), "total" (images of the scene)}}}}}``;
        ``maa`` and ``score`` of a dataset the default rule leaves out are None.

    Raises
    ------
    DataLayoutError
        Malformed file, empty ground truth, blank label, unknown or duplicate
        image, missing dataset or image, bad thresholds, no dataset to score.
    """
    notes = []

    def warn(message):
        notes.append(message)
        warnings.warn(message, ScoreWarning, stacklevel=3)

    gt, gt_name = _read_poses(gt_csv, "ground truth")
    sub, name = _read_poses(submission_csv, "submission", strict=official)
    given, th_name = ({}, None) if thresholds_csv is None else _read_thresholds(thresholds_csv)
    _check_against(gt, gt_name, sub, name)
    thresholds = _thresholds_for(gt, given, th_name, official, warn)
    combine = _combine_official if official else _combine_default
    datasets = {}
    for ds, g in gt.groupby("dataset", sort=False):
        scenes = _match_scenes(ds, g, sub[sub["dataset"] == ds], thresholds, official, max_triplets,
                               seed, warn)
        maa, clusterness, total = combine(ds, scenes, warn)
        datasets[ds] = {"maa": maa, "clusterness": clusterness, "score": total, "scenes": {
            sc: {"maa": s["num"] / (s["lt"] * (s["m"] - TO_DEC)) if s["num"] else 0.0,
                 "clusterness": s["shared"] / s["size"] if s["size"] else 0.0,
                 "cluster": s["cluster"], "shared": s["shared"], "registered": s["registered"],
                 "posed": s["posed"], "total": s["total"]} for sc, s in scenes.items()}}
    scored = [d["score"] for d in datasets.values() if d["score"] is not None]
    if not scored:
        raise DataLayoutError(f"{gt_name}: no dataset has a scene with more than {TO_DEC} posed "
                              f"images, nothing to score")
    return {"score": 100 * float(np.mean(scored)), "official": official, "warnings": notes,
            "datasets": datasets}
