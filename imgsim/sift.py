"""SIFT keypoints, ratio-test matching and geometric verification of image pairs.

The classical answer to "do these two photos show the same place?": detect SIFT
keypoints, match their descriptors (Lowe's ratio test, optionally mutual nearest
neighbours), and count the matches that one geometric model explains — a
fundamental matrix (any static scene) or a homography (a plane, or a camera
that only rotates) — estimated robustly with OpenCV's MAGSAC++.

Coordinate convention
---------------------
Each image is shrunk so that its long side is at most ``SiftConfig.max_side``
pixels (never enlarged) before extraction; ``Features.scale`` is that factor.

* Keypoints (and keypoint sizes) are returned in pixels of the **original**
  image, so they can be drawn on it and compared across settings.
* ``SiftConfig.ransac_threshold`` is in pixels of the **resized** image (the one
  SIFT saw): :func:`verify` multiplies the keypoints by each image's scale
  before estimation. A threshold of 1 px therefore means the same thing for a
  640 px and a 4000 px photo, matching the keypoints' own localisation accuracy.

Bad input never raises from OpenCV: an image without keypoints, a pair with too
few matches or a failed estimation gives zero inliers and a ``reason``.
"""

import contextlib
import hashlib
import io
import json
import math
import multiprocessing
import os
import tempfile
import threading
import zipfile
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import cv2
import numpy as np

from imgsim.config import DictConfig
from imgsim.images import MIN_SIDE, file_digest, load_image
from imgsim.errors import ConfigError
from imgsim.fileio import atomic_write_bytes

ESTIMATORS = {"fundamental": "fundamental matrix", "homography": "homography"}
MIN_SAMPLE = {"fundamental": 7, "homography": 4}  # minimal sample of each model
DESCRIPTOR_SIZE = 128
EXTRACTION_FIELDS = ("max_side", "n_features", "root_sift", "upright")  # the cache key
MATCHERS = ("bf", "flann")
FLANN_TREES, FLANN_CHECKS = 4, 64  # k-d trees and leaves visited per query


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass
class SiftConfig(DictConfig):
    """Settings of extraction, matching and verification.

    Attributes
    ----------
    max_side : int
        Long side, in pixels, that images are shrunk to before extraction
        (never enlarged). At least 32.
    n_features : int
        Keep the strongest ``n_features`` keypoints (OpenCV's ``nfeatures``);
        0 keeps all.
    root_sift : bool
        RootSIFT descriptors: L1-normalise, then square root (unit L2 norm).
    upright : bool
        Set every keypoint's orientation to 0 before computing descriptors
        (duplicates that differed only by orientation are dropped). Better for
        photos without in-plane rotation, worse for rotated ones.
    ratio : float
        Lowe's ratio test: keep a match whose distance is below ``ratio`` × the
        second-nearest distance. In (0, 1].
    mutual : bool
        Keep only mutual nearest neighbours.
    matcher : {"bf", "flann"}
        Nearest-neighbour search of :func:`match`: ``"bf"`` exact brute force;
        ``"flann"`` approximate FLANN k-d trees (``FLANN_TREES`` trees,
        ``FLANN_CHECKS`` checks): at 4000 keypoints matching took about 0.6× the
        time of ``"bf"`` in trials, for 1–4 % fewer inliers.
    estimator : {"fundamental", "homography"}
        Geometric model of :func:`verify`.
    ransac_threshold : float
        Inlier threshold in pixels of the resized image (see the module notes).
    confidence : float
        MAGSAC confidence, in (0, 1).
    max_iters : int
        MAGSAC iteration cap.
    min_matches : int
        Pairs with fewer matches are not verified (zero inliers). At least the
        model's minimal sample (7 for fundamental, 4 for homography).
    static_px : float
        Between two images of the same size, a match whose keypoints lie
        within ``static_px`` pixels (of the resized images) of each other is
        *static* and is dropped before verification: what does not move
        between two photos (a still backdrop or a fixed ruler while an object
        turns on a turntable, a watermark, a date stamp) says nothing about the
        scene and would pull an estimated pose towards "no motion". 0 keeps
        every match (the default; :mod:`imgsim.reconstruct` turns it on).
    planar_threshold : float
        Transfer error, in pixels of the resized image, under which an inlier
        counts as explained by the dominant homography
        (:func:`pair_evidence`'s ``n_planar``).
    """

    max_side: int = 1024
    n_features: int = 4000
    root_sift: bool = True
    upright: bool = False
    ratio: float = 0.8
    mutual: bool = True
    matcher: str = "bf"
    estimator: str = "fundamental"
    ransac_threshold: float = 1.0
    confidence: float = 0.999
    max_iters: int = 10000
    min_matches: int = 8
    static_px: float = 0.0
    planar_threshold: float = 2.0

    def __post_init__(self):
        if not _is_int(self.max_side) or self.max_side < MIN_SIDE:
            raise ConfigError(f"max_side must be an integer >= {MIN_SIDE}, got {self.max_side!r}")
        if not _is_int(self.n_features) or self.n_features < 0:
            raise ConfigError(f"n_features must be an integer >= 0 (0: all), got {self.n_features!r}")
        for name in ("root_sift", "upright", "mutual"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not 0 < self.ratio <= 1:
            raise ConfigError(f"ratio must be in (0, 1], got {self.ratio!r}")
        if self.matcher not in MATCHERS:
            raise ConfigError(f"matcher must be one of {MATCHERS}, got {self.matcher!r}")
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"estimator must be one of {tuple(ESTIMATORS)}, got {self.estimator!r}")
        if not self.ransac_threshold > 0:
            raise ConfigError(f"ransac_threshold must be > 0 pixels, got {self.ransac_threshold!r}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence must be in (0, 1), got {self.confidence!r}")
        if not _is_int(self.max_iters) or self.max_iters < 1:
            raise ConfigError(f"max_iters must be an integer >= 1, got {self.max_iters!r}")
        least = MIN_SAMPLE[self.estimator]
        if not _is_int(self.min_matches) or self.min_matches < least:
            raise ConfigError(f"min_matches must be an integer >= {least} for estimator "
                              f"{self.estimator!r}, got {self.min_matches!r}")
        if not (isinstance(self.static_px, (int, float)) and 0 <= self.static_px < math.inf):
            raise ConfigError(f"static_px must be a number of pixels >= 0, got {self.static_px!r}")
        if not (isinstance(self.planar_threshold, (int, float)) and 0 < self.planar_threshold < math.inf):
            raise ConfigError(f"planar_threshold must be a number of pixels > 0, "
                              f"got {self.planar_threshold!r}")


@dataclass(eq=False)
class Features:
    """SIFT features of one image.

    Attributes
    ----------
    keypoints : numpy.ndarray of shape (n, 2), float32
        x, y in pixels of the original image (pixel centres at integers).
    scales : numpy.ndarray of shape (n,), float32
        Keypoint diameters (OpenCV ``KeyPoint.size``) in original pixels.
    angles : numpy.ndarray of shape (n,), float32
        Orientations in degrees, [0, 360); all 0 with ``upright``.
    descriptors : numpy.ndarray of shape (n, 128), float32
    image_size : (int, int)
        (height, width) of the original image.
    scale : float
        Resize factor used before extraction (≤ 1).
    """

    keypoints: np.ndarray
    scales: np.ndarray
    angles: np.ndarray
    descriptors: np.ndarray
    image_size: tuple
    scale: float

    def __len__(self):
        return len(self.keypoints)


# --------------------------------------------------------------------------- extraction


def _gray(image):
    """A path or an (h, w, 3) RGB / (h, w) gray uint8 array → (h, w) uint8 gray array."""
    if not isinstance(image, np.ndarray):
        image = load_image(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError("image must be a path or an (h, w, 3) RGB or (h, w) gray uint8 array, "
                         f"got shape {image.shape} and dtype {image.dtype}")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"image is empty, shape {image.shape}")
    image = np.ascontiguousarray(image)  # OpenCV refuses views with negative strides
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image


def _root_sift(descriptors):
    l1 = descriptors.sum(axis=1, keepdims=True)  # SIFT descriptors are non-negative
    return np.sqrt(descriptors / np.maximum(l1, np.finfo(np.float32).tiny))


def _upright(keypoints):
    """Orientation 0 for all; keep one keypoint per (position, size, octave)."""
    unique = {}
    for kp in keypoints:
        kp.angle = 0.0
        unique.setdefault((kp.pt, kp.size, kp.octave), kp)
    return list(unique.values())


def extract(image, config=None):
    """SIFT keypoints and descriptors of one image.

    Parameters
    ----------
    image : str, path or numpy.ndarray
        A file (decoded by :func:`imgsim.images.load_image`: EXIF orientation,
        every colour mode, clear errors for bad files), an (h, w, 3) uint8 RGB
        array or an (h, w) uint8 gray array.
    config : SiftConfig, optional
        Uses ``max_side``, ``n_features``, ``root_sift`` and ``upright``.

    Returns
    -------
    Features
        Empty arrays (n = 0) for an image without keypoints, e.g. a flat colour.
    """
    config = config or SiftConfig()
    gray = _gray(image)
    height, width = gray.shape
    scale = min(1.0, config.max_side / max(height, width))
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    sift = cv2.SIFT_create(nfeatures=config.n_features)
    if config.upright:
        keypoints, descriptors = sift.compute(gray, _upright(sift.detect(gray, None)))
    else:
        keypoints, descriptors = sift.detectAndCompute(gray, None)
    if descriptors is None or not len(keypoints):
        keypoints, descriptors = (), np.zeros((0, DESCRIPTOR_SIZE), np.float32)
    descriptors = descriptors.astype(np.float32)
    if config.root_sift:
        descriptors = _root_sift(descriptors)
    xy = np.array([kp.pt for kp in keypoints], np.float32).reshape(-1, 2)
    # Resized pixel centres → original pixel centres, per axis (rounding makes them differ slightly).
    factors = np.array([gray.shape[1] / width, gray.shape[0] / height], np.float32)
    return Features(
        keypoints=(xy + 0.5) / factors - 0.5,
        scales=np.array([kp.size for kp in keypoints], np.float32) / np.float32(scale),
        angles=np.array([kp.angle for kp in keypoints], np.float32),
        descriptors=np.ascontiguousarray(descriptors),
        image_size=(height, width),
        scale=float(scale),
    )


# --------------------------------------------------------------------------- matching


def _check_descriptors(desc, name):
    desc = np.asarray(desc)
    if desc.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, dim), got shape {desc.shape}")
    return np.ascontiguousarray(desc, dtype=np.float32)


def match(desc_a, desc_b, ratio=0.8, mutual=True, matcher="bf"):
    """Match descriptors by nearest neighbour (L2) with Lowe's ratio test.

    Parameters
    ----------
    desc_a : array-like of shape (n_a, dim)
    desc_b : array-like of shape (n_b, dim)
    ratio : float
        Keep a→b when the nearest distance is below ``ratio`` × the second
        nearest (ties are rejected). In (0, 1].
    mutual : bool
        Also require that a is the nearest neighbour of b among ``desc_a``
        (searched only for the b's that passed the ratio test).
    matcher : {"bf", "flann"}
        Exact brute force, or approximate FLANN k-d trees (float descriptors
        only). FLANN's trees are built from OpenCV's RNG seeded with 0
        (``cv2.setRNGSeed(0)`` in the calling thread), so results are
        reproducible.

    Returns
    -------
    numpy.ndarray of shape (m, 2), int64
        ``(index_a, index_b)`` rows, sorted by ``index_a``. Empty when either
        side has fewer than 2 descriptors (the ratio test needs two).
    """
    desc_a, desc_b = _check_descriptors(desc_a, "desc_a"), _check_descriptors(desc_b, "desc_b")
    if desc_a.shape[1] != desc_b.shape[1]:
        raise ValueError(f"descriptor sizes differ: {desc_a.shape[1]} and {desc_b.shape[1]}")
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
    if matcher not in MATCHERS:
        raise ValueError(f"matcher must be one of {MATCHERS}, got {matcher!r}")
    empty = np.zeros((0, 2), np.int64)
    if len(desc_a) < 2 or len(desc_b) < 2:
        return empty
    if matcher == "flann":
        knn, nearest = _flann_knn, _flann_nearest
    else:
        bf = cv2.BFMatcher(cv2.NORM_L2)
        knn, nearest = (lambda q, t: bf.knnMatch(q, t, k=2)), bf.match
    pairs = [(m[0].queryIdx, m[0].trainIdx) for m in knn(desc_a, desc_b)
             if len(m) == 2 and m[0].distance < ratio * m[1].distance]
    if mutual and pairs:
        # only the b's that some a chose need their own nearest neighbour in A
        rows_b = np.unique([b for _, b in pairs])
        nearest_in_a = {int(rows_b[m.queryIdx]): m.trainIdx
                        for m in nearest(np.ascontiguousarray(desc_b[rows_b]), desc_a)}
        pairs = [(a, b) for a, b in pairs if nearest_in_a.get(b) == a]
    return np.array(pairs, np.int64).reshape(-1, 2) if pairs else empty


def _flann(train):
    """A FLANN k-d tree matcher over ``train``, built from a fixed RNG seed (reproducible)."""
    cv2.setRNGSeed(0)
    flann = cv2.FlannBasedMatcher({"algorithm": 1, "trees": FLANN_TREES}, {"checks": FLANN_CHECKS})
    flann.add([train])
    flann.train()
    return flann


def _flann_knn(query, train):
    return _flann(train).knnMatch(query, k=2)


def _flann_nearest(query, train):
    return _flann(train).match(query)


# --------------------------------------------------------------------------- verification


def verify(kp_a, kp_b, matches, config=None, scales=(1.0, 1.0)):
    """Inliers of one geometric model (MAGSAC++) among the matches.

    Parameters
    ----------
    kp_a : array-like of shape (n_a, 2)
    kp_b : array-like of shape (n_b, 2)
        Keypoints x, y (original pixels, as in :class:`Features`).
    matches : array-like of shape (m, 2)
        ``(index_a, index_b)`` rows, as from :func:`match`.
    config : SiftConfig, optional
        Uses ``estimator``, ``ransac_threshold``, ``confidence``,
        ``max_iters`` and ``min_matches``.
    scales : (float, float)
        ``Features.scale`` of each image: keypoints are multiplied by them so
        that ``ransac_threshold`` is in pixels of the resized images. (1, 1)
        puts the threshold in the keypoints' own pixels.

    Returns
    -------
    inliers : numpy.ndarray of shape (m,), bool
    reason : str or None
        Why there are no inliers (e.g. ``"fewer than 8 matches (5)"``), else None.
    """
    config = config or SiftConfig()
    matches = np.asarray(matches, np.int64).reshape(-1, 2)
    none = np.zeros(len(matches), bool)
    if len(matches) < config.min_matches:
        return none, f"fewer than {config.min_matches} matches ({len(matches)})"
    pts_a = np.asarray(kp_a, np.float64)[matches[:, 0]] * scales[0]
    pts_b = np.asarray(kp_b, np.float64)[matches[:, 1]] * scales[1]
    try:
        if config.estimator == "homography":
            model, mask = cv2.findHomography(
                pts_a, pts_b, method=cv2.USAC_MAGSAC, ransacReprojThreshold=config.ransac_threshold,
                maxIters=config.max_iters, confidence=config.confidence)
        else:
            model, mask = cv2.findFundamentalMat(
                pts_a, pts_b, method=cv2.USAC_MAGSAC, ransacReprojThreshold=config.ransac_threshold,
                confidence=config.confidence, maxIters=config.max_iters)
    except cv2.error as exc:
        detail = " ".join(str(exc).split("error: ", 1)[-1].split())  # drop "OpenCV(x) file:line: "
        return none, f"{ESTIMATORS[config.estimator]} estimation failed: {detail}"
    if model is None or mask is None or not mask.any():
        return none, f"no {ESTIMATORS[config.estimator]} found"
    return mask.ravel().astype(bool), None


# --------------------------------------------------------------------------- pairs


@dataclass
class PairScore(DictConfig):
    """How well two images match geometrically.

    Attributes
    ----------
    n_keypoints_a, n_keypoints_b : int
    n_matches : int
        Matches that passed the ratio (and mutual) test.
    n_inliers : int
        Matches the geometric model explains.
    inlier_ratio : float
        ``n_inliers / n_matches``, 0 when there are no matches.
    reason : str or None
        Why ``n_inliers`` is 0, else None.
    n_static : int
        Matches dropped as static (``SiftConfig.static_px``); they count in
        ``n_matches``, never in ``n_inliers``.
    """

    n_keypoints_a: int
    n_keypoints_b: int
    n_matches: int
    n_inliers: int
    inlier_ratio: float
    reason: str = None
    n_static: int = 0


@dataclass(eq=False)
class PairMatches:
    """Features, matches and inliers of a pair (for scoring and drawing).

    Attributes
    ----------
    features_a, features_b : Features
    matches : numpy.ndarray of shape (m, 2), int64
    inliers : numpy.ndarray of shape (m,), bool
    reason : str or None
    static : numpy.ndarray of shape (m,), bool, optional
        Matches dropped as static before verification (none by default).
    """

    features_a: Features
    features_b: Features
    matches: np.ndarray
    inliers: np.ndarray
    reason: str = None
    static: np.ndarray = None

    def score(self):
        """The :class:`PairScore` of this pair."""
        n_matches, n_inliers = len(self.matches), int(self.inliers.sum())
        return PairScore(
            n_keypoints_a=len(self.features_a), n_keypoints_b=len(self.features_b),
            n_matches=n_matches, n_inliers=n_inliers,
            inlier_ratio=n_inliers / n_matches if n_matches else 0.0, reason=self.reason,
            n_static=int(self.static.sum()) if self.static is not None else 0)


def _features(image, config, cache):
    if isinstance(image, Features):
        return image
    if cache is not None and not isinstance(image, np.ndarray):
        return cache.get(image, config)
    return extract(image, config)


def pair_matches(image_a, image_b, config=None, cache=None):
    """Extract, match and verify one pair.

    Parameters
    ----------
    image_a, image_b : str, path, numpy.ndarray or Features
        Anything :func:`extract` takes, or features already extracted.
    config : SiftConfig, optional
    cache : FeatureCache, optional
        Used for paths; arrays are always extracted afresh.

    Returns
    -------
    PairMatches
    """
    config = config or SiftConfig()
    features_a, features_b = (_features(image, config, cache) for image in (image_a, image_b))
    matches = match(features_a.descriptors, features_b.descriptors, config.ratio, config.mutual,
                    config.matcher)
    static = static_matches(features_a, features_b, matches, config.static_px)
    inliers = np.zeros(len(matches), bool)
    empty = [side for side, f in (("A", features_a), ("B", features_b)) if not len(f)]
    if empty:
        reason = f"no keypoints in image {' and '.join(empty)}"
    else:
        inliers[~static], reason = verify(features_a.keypoints, features_b.keypoints,
                                          matches[~static], config,
                                          scales=(features_a.scale, features_b.scale))
    return PairMatches(features_a, features_b, matches, inliers, reason, static)


def static_matches(features_a, features_b, matches, static_px):
    """Which matches do not move between two images of the same size.

    Parameters
    ----------
    features_a, features_b : Features
    matches : numpy.ndarray of shape (m, 2)
        Keypoint indices ``(index_a, index_b)``.
    static_px : float
        Largest displacement, in pixels of the resized images, of a static
        match; 0 marks none.

    Returns
    -------
    numpy.ndarray of shape (m,), bool
        All False when the images differ in size (no common pixel grid) or
        ``static_px`` is 0.
    """
    matches = np.asarray(matches, np.int64).reshape(-1, 2)
    if not static_px or tuple(features_a.image_size) != tuple(features_b.image_size) or not len(matches):
        return np.zeros(len(matches), bool)
    moved = (features_a.keypoints[matches[:, 0]] - features_b.keypoints[matches[:, 1]]) * features_a.scale
    return np.hypot(moved[:, 0], moved[:, 1]) <= static_px


SPREAD_GRID = 8  # cells per side of the grid that pair_evidence's spread counts
STILL_SIMILARITY = 0.9  # cosine of two descriptors of one still keypoint (RootSIFT: L2 < 0.45)


def still_keypoints(features_a, features_b, static_px, min_similarity=STILL_SIMILARITY):
    """Keypoints that stand still between two images of the same size.

    A keypoint of A is still when B has a keypoint within ``static_px``
    pixels (of the resized images) of it whose descriptor is nearly the same
    (cosine similarity at least ``min_similarity``) — the same thing at the
    same pixel, found without matching.

    Returns
    -------
    index_a, index_b : int64 arrays of shape (k,)
        Paired keypoint indices; empty when the sizes differ or
        ``static_px`` is 0.
    """
    empty = np.zeros(0, np.int64)
    if not static_px or tuple(features_a.image_size) != tuple(features_b.image_size) \
            or not len(features_a) or not len(features_b):
        return empty, empty
    pa = features_a.keypoints.astype(np.float64) * features_a.scale
    pb = features_b.keypoints.astype(np.float64) * features_b.scale
    # a grid of static_px cells: a point's neighbours within static_px lie in its 3 × 3 cells
    cell_a, cell_b = np.floor(pa / static_px).astype(np.int64), np.floor(pb / static_px).astype(np.int64)
    key_b = cell_b[:, 0] * (1 << 32) + cell_b[:, 1]
    order = np.argsort(key_b, kind="stable")
    sorted_b = key_b[order]
    index_a = np.arange(len(pa))
    found_a, found_b = [], []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            key = (cell_a[:, 0] + dx) * (1 << 32) + cell_a[:, 1] + dy
            left, right = np.searchsorted(sorted_b, key, "left"), np.searchsorted(sorted_b, key, "right")
            for step in range(int((right - left).max(initial=0))):  # keypoints sharing a cell
                has = left + step < right
                found_a.append(index_a[has])
                found_b.append(order[left[has] + step])
    if not found_a:
        return empty, empty
    ia, ib = np.concatenate(found_a), np.concatenate(found_b)
    near = np.hypot(*(pa[ia] - pb[ib]).T) <= static_px
    ia, ib = ia[near], ib[near]
    da, db = features_a.descriptors[ia], features_b.descriptors[ib]
    cosine = np.sum(da * db, axis=1) / np.maximum(
        np.linalg.norm(da, axis=1) * np.linalg.norm(db, axis=1), np.finfo(np.float32).tiny)
    keep = cosine >= min_similarity
    ia, ib = ia[keep], ib[keep]
    first = np.unique(ia, return_index=True)[1]  # one partner per keypoint of A
    return ia[first].astype(np.int64), ib[first].astype(np.int64)


def backdrop_keypoints(features, pairs, moving, static_px, min_moving):
    """Keypoints of each image that belong to a still backdrop.

    A pair of same-size images whose verified (moving) inliers show that
    something moved (at least ``min_moving`` of them) while some keypoints
    stood still (:func:`still_keypoints`) marks those still keypoints, in both
    images, as backdrop: a studio background or a fixed ruler behind a
    turntable, a watermark. Their matches to *any* photo say nothing about the
    object. Near-duplicate photos (nothing moved) mark nothing.

    Parameters
    ----------
    features : callable or sequence
        ``features[i]`` (or ``features(i)``): the :class:`Features` of image i.
    pairs : sequence of (int, int)
    moving : sequence of int
        Verified inliers of each pair (static matches already dropped).
    static_px : float
    min_moving : int

    Returns
    -------
    dict image index -> bool array over its keypoints (only images with a
    backdrop keypoint are present).
    """
    get = features if callable(features) else features.__getitem__
    marks = {}
    for (a, b), n_moving in zip(pairs, moving):
        if n_moving < min_moving or not static_px:
            continue
        fa, fb = get(a), get(b)
        index_a, index_b = still_keypoints(fa, fb, static_px)
        for image, feats, index in ((a, fa, index_a), (b, fb, index_b)):
            if len(index):
                marks.setdefault(image, np.zeros(len(feats), bool))[index] = True
    return marks


def pair_evidence(features_a, features_b, inliers, config=None):
    """How much a pair's inliers say about a shared 3-D scene, beyond their number.

    Parameters
    ----------
    features_a, features_b : Features
        Only ``keypoints``, ``image_size`` and ``scale`` are read.
    inliers : array-like of shape (k, 2)
        Verified matches ``(index_a, index_b)`` (as ``score_pairs`` keeps them).
    config : SiftConfig, optional
        Uses ``planar_threshold``, ``confidence`` and ``max_iters``.

    Returns
    -------
    n_planar : int
        Inliers that one homography explains (MAGSAC++, transfer error below
        ``planar_threshold`` resized pixels). A match set that a single
        homography explains (a planar backdrop, a poster, a floor, or a camera
        that only rotated) is weaker evidence of one scene than one that needs
        a fundamental matrix; ``n_inliers - n_planar`` is the part that does.
    spread : float
        In [0, 1]: the fraction of the cells of a ``SPREAD_GRID`` × ``SPREAD_GRID``
        grid over each image that hold an inlier, the smaller of the two
        images (inliers bunched on a logo or a small patch spread little).
    """
    config = config or SiftConfig()
    inl = np.asarray(inliers, np.int64).reshape(-1, 2)
    if not len(inl):
        return 0, 0.0
    spreads = []
    for feats, column in ((features_a, 0), (features_b, 1)):
        height, width = feats.image_size
        xy = feats.keypoints[inl[:, column]]
        cells = (np.clip(xy[:, 1] * SPREAD_GRID // height, 0, SPREAD_GRID - 1) * SPREAD_GRID
                 + np.clip(xy[:, 0] * SPREAD_GRID // width, 0, SPREAD_GRID - 1))
        spreads.append(len(np.unique(cells)) / SPREAD_GRID ** 2)
    n_planar = len(inl)
    if len(inl) > MIN_SAMPLE["homography"]:
        pts_a = np.asarray(features_a.keypoints[inl[:, 0]], np.float64) * features_a.scale
        pts_b = np.asarray(features_b.keypoints[inl[:, 1]], np.float64) * features_b.scale
        try:
            model, mask = cv2.findHomography(pts_a, pts_b, method=cv2.USAC_MAGSAC,
                                             ransacReprojThreshold=config.planar_threshold,
                                             maxIters=config.max_iters, confidence=config.confidence)
            n_planar = int(mask.sum()) if model is not None and mask is not None else 0
        except cv2.error:
            n_planar = 0
    return n_planar, float(min(spreads))


def pair_score(image_a, image_b, config=None, cache=None):
    """:class:`PairScore` of one pair; arguments as in :func:`pair_matches`."""
    return pair_matches(image_a, image_b, config, cache).score()


# --------------------------------------------------------------------------- cache


def default_cache_dir():
    """``$XDG_CACHE_HOME/imgsim/sift``, by default ``~/.cache/imgsim/sift``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "imgsim", "sift")


class FeatureCache:
    """Features on disk, one ``.npz`` per image content and extraction setting.

    The key is the SHA-256 of the file's bytes plus ``max_side``,
    ``n_features``, ``root_sift`` and ``upright``, so a renamed copy hits and an
    edited file misses. Files are written atomically; an unreadable one
    (truncated, corrupt) counts as a miss and is rewritten. Safe to share
    between threads, and between processes and machines that see the folder
    at the same path. :func:`score_pairs` keeps its pair chunks in the
    ``pairs/`` sub-folder.

    Parameters
    ----------
    folder : str or path, optional
        Defaults to :func:`default_cache_dir`.

    Attributes
    ----------
    hits, misses : int
        Features read from the cache / extracted (:meth:`get`, and the Dask
        extraction of :func:`score_pairs`).
    chunk_hits, chunk_misses : int
        Pair chunks of :func:`score_pairs` read from the cache / scored.
    """

    def __init__(self, folder=None):
        self.folder = os.fspath(folder) if folder is not None else default_cache_dir()
        self.hits = self.misses = 0
        self.chunk_hits = self.chunk_misses = 0
        self._lock = threading.Lock()
        self._digests = {}  # (path, inode, size, mtime_ns) -> SHA-256 of the file

    def __repr__(self):
        return f"FeatureCache({self.folder!r}, hits={self.hits}, misses={self.misses})"

    def digest(self, path):
        """SHA-256 of the file ``path`` (:func:`imgsim.images.file_digest`), remembered for as
        long as the file keeps its inode, size and modification time: one hash per image per
        run, shared by every cache key built from it (features, reconstruct's stages)."""
        stat = os.stat(path)
        stamp = (os.fspath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        digest = self._digests.get(stamp)
        if digest is None:
            digest = self._digests[stamp] = file_digest(path)
        return digest

    def file_for(self, path, config=None):
        """The cache file of image ``path`` under ``config``'s extraction settings."""
        config = config or SiftConfig()
        settings = "".join(f"_{name}={getattr(config, name)}" for name in EXTRACTION_FIELDS)
        return os.path.join(self.folder, self.digest(path) + settings + ".npz")

    def get(self, path, config=None):
        """Features of the image file ``path``, extracted (and stored) on a miss."""
        config = config or SiftConfig()
        file = self.file_for(path, config)
        features = _read_features(file)
        with self._lock:
            if features is None:
                self.misses += 1
            else:
                self.hits += 1
        if features is None:
            features = extract(path, config)
            _write_features(file, features)
        return features


def _write_features(file, features):
    buffer = io.BytesIO()
    np.savez(buffer, keypoints=features.keypoints, scales=features.scales, angles=features.angles,
             descriptors=features.descriptors, image_size=np.asarray(features.image_size, np.int64),
             scale=np.float64(features.scale))
    atomic_write_bytes(file, buffer.getvalue())


def _read_features(file):
    """Features from a cache file, or None if it is missing or unreadable."""
    try:
        with np.load(file, allow_pickle=False) as z:
            height, width = (int(v) for v in z["image_size"])
            features = Features(keypoints=z["keypoints"], scales=z["scales"], angles=z["angles"],
                                descriptors=z["descriptors"], image_size=(height, width),
                                scale=float(z["scale"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    n = len(features.keypoints)
    shapes_ok = (features.keypoints.shape == (n, 2) and features.descriptors.shape == (n, DESCRIPTOR_SIZE)
                 and features.scales.shape == features.angles.shape == (n,))
    return features if shapes_ok else None


def extract_many(paths, config=None, cache=None, workers=None, progress=False, keep=True):
    """Features of many image files in parallel threads (OpenCV releases the GIL).

    Parameters
    ----------
    paths : iterable of str or path
        Repeated paths are extracted once.
    config : SiftConfig, optional
    cache : FeatureCache, optional
    workers : int, optional
        Threads; default ``min(8, cpu_count)``.
    progress : bool
        Show a tqdm bar.
    keep : bool
        False: only make sure ``cache`` holds every image's features, keeping
        none in memory (what a scoring pass that reads the cache files needs:
        memory stays flat whatever the number of images).

    Returns
    -------
    list of Features, in the order of ``paths``; None when not ``keep``.
    """
    config = config or SiftConfig()
    if not keep and cache is None:
        raise ValueError("keep=False needs a cache to hold the features")
    paths = [os.fspath(p) for p in paths]
    unique = list(dict.fromkeys(paths))
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda p: _features(p, config, cache) if keep else cache.get(p, config) and None,
                           unique)
        if progress:
            from tqdm.auto import tqdm
            results = tqdm(results, total=len(unique), desc="SIFT", unit="img")
        by_path = dict(zip(unique, results))
    return [by_path[p] for p in paths] if keep else None


# --------------------------------------------------------------------------- many pairs

WORKER_FEATURES = 32  # features each scoring process keeps in memory (least recently used out)
PAIRS_PER_CHUNK = 64  # most pairs in one task
MIN_CHUNKS = 32  # fewer pairs than 32 × 64 are cut into this many (smaller) chunks
EXTRACT_SHARD = 16  # most images per feature-extraction task on Dask (≥ 4 tasks per worker)
CHUNK_VERSION = 1  # part of every pair-chunk key: bump it when a pair's result changes
_worker = {}  # state of a score_pairs pool worker process
_loaded = OrderedDict()  # cache file -> Features, the last WORKER_FEATURES read by this process
_loaded_lock = threading.Lock()


def _init_worker(files, paths, config, threads, keep_matches, parent=None):
    if parent is not None:
        from imgsim.distributed import die_with_parent

        die_with_parent(parent)
    cv2.setNumThreads(threads)
    _worker.update(files=files, paths=paths, config=config, keep_matches=keep_matches)


def _load_features(file, path, config):
    """Features from memory, else from the cache ``file``, else extracted afresh from ``path``."""
    with _loaded_lock:
        if file in _loaded:
            _loaded.move_to_end(file)
            return _loaded[file]
    features = _read_features(file)
    if features is None:  # the file went away or was damaged since extraction
        features = extract(path, config)
    with _loaded_lock:
        _loaded[file] = features
        while len(_loaded) > WORKER_FEATURES:
            _loaded.popitem(last=False)
    return features


def _worker_features(i):
    """Features of distinct image ``i`` of a pool worker."""
    return _load_features(_worker["files"][i], _worker["paths"][i], _worker["config"])


def _pair_result(features_a, features_b, config, keep_matches):
    """A PairScore, or (PairScore, inlier matches of shape (n_inliers, 2)) with ``keep_matches``."""
    result = pair_matches(features_a, features_b, config)
    if not keep_matches:
        return result.score()
    return result.score(), result.matches[result.inliers].astype(np.uint32)


def _chunk_results(chunk, features_of, config, out_file=None):
    """(PairScore, inliers) of each ``(a, b)`` of ``chunk``; stored in ``out_file`` if given."""
    results = [_pair_result(features_of(a), features_of(b), config, True) for a, b in chunk]
    if out_file is not None:
        _write_chunk(out_file, results)
    return results


def _score_chunk(chunk, out_file=None):
    """Pool worker: score ``chunk`` (pairs of distinct-image numbers), store it in ``out_file``."""
    results = _chunk_results(chunk, _worker_features, _worker["config"], out_file)
    return results if _worker["keep_matches"] else [score for score, _ in results]


def _score_chunk_task(files, paths, chunk, config, out_file):
    """Dask task: score ``chunk`` (pairs of indices into ``files``/``paths``), store it in ``out_file``."""
    from imgsim.distributed import task_threads

    cv2.setNumThreads(task_threads() or cv2.getNumThreads())
    return _chunk_results(chunk, lambda i: _load_features(files[i], paths[i], config), config, out_file)


def _extract_task(paths, config, folder):
    """Dask task: the cache file of each image in ``paths``, extracted into ``folder`` if missing.

    Returns a list of ``(cache file, extracted now)``.
    """
    from imgsim.distributed import task_threads

    cv2.setNumThreads(task_threads() or cv2.getNumThreads())
    cache, out = FeatureCache(folder), []
    for path in paths:
        file = cache.file_for(path, config)
        fresh = not os.path.exists(file)
        if fresh:
            _write_features(file, extract(path, config))
        out.append((file, fresh))
    return out


def _write_chunk(file, results):
    """Store a chunk's (PairScore, inliers) list: scores as JSON, inliers concatenated."""
    buffer = io.BytesIO()
    inliers = [np.asarray(m, np.uint32).reshape(-1, 2) for _, m in results]
    np.savez(buffer, scores=np.array(json.dumps([s.to_dict() for s, _ in results])),
             counts=np.array([len(m) for m in inliers], np.int64),
             inliers=np.concatenate(inliers) if inliers else np.zeros((0, 2), np.uint32))
    atomic_write_bytes(file, buffer.getvalue())


def _read_chunk(file, n):
    """A chunk's results, or None if the file is missing, unreadable or not of ``n`` pairs."""
    try:
        with np.load(file, allow_pickle=False) as z:
            scores = [PairScore.from_dict(d) for d in json.loads(str(z["scores"]))]
            counts, flat = z["counts"], z["inliers"]
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile):
        return None
    if len(scores) != n or len(counts) != n or counts.sum() != len(flat) or flat.ndim != 2:
        return None
    return list(zip(scores, np.split(flat, np.cumsum(counts)[:-1]) if n else []))


def _chunks(todo):
    """Cut the sorted pair list into chunks whose size depends only on its length."""
    size = min(PAIRS_PER_CHUNK, max(1, math.ceil(len(todo) / MIN_CHUNKS)))
    return [todo[i:i + size] for i in range(0, len(todo), size)]


def _chunk_file(folder, config, names):
    """``folder/pairs/<key>.npz``: the key covers every setting and both images' contents."""
    key = json.dumps([CHUNK_VERSION, config.to_dict(), names], sort_keys=True)
    return os.path.join(folder, "pairs", hashlib.sha256(key.encode()).hexdigest()[:32] + ".npz")


def _cache_files_here(paths, config, cache):
    """Cache file of each path (content digests in threads; hashing releases the GIL)."""
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda p: cache.file_for(p, config), paths))


def _cache_files_on_cluster(dask_client, paths, config, cache, progress):
    """Cache file of each path, every missing feature extracted on the cluster's workers."""
    from imgsim.distributed import n_workers, run_tasks

    size = max(1, min(EXTRACT_SHARD, math.ceil(len(paths) / (4 * n_workers(dask_client)))))
    shards = [paths[i:i + size] for i in range(0, len(paths), size)]
    folder = os.path.abspath(cache.folder)
    done = run_tasks(dask_client, _extract_task, [(shard, config, folder) for shard in shards],
                     progress, desc="SIFT", unit="shard")
    files = [file for shard in done for file, _ in shard]
    fresh = sum(extracted for shard in done for _, extracted in shard)
    with cache._lock:
        cache.misses += fresh
        cache.hits += len(files) - fresh
    return files


def score_pairs(pairs, config=None, cache=None, processes=None, progress=False, keep_matches=False,
                *, workers=None, scheduler=None):
    """:class:`PairScore` of many (path_a, path_b) pairs, scored in parallel processes or on Dask.

    The distinct pairs are sorted by the two images' cache keys and cut into
    chunks whose size depends only on their number; each chunk's results go
    to ``cache.folder/pairs/<key>.npz``, the key covering every
    :class:`SiftConfig` field and both images' contents. A chunk found there
    is not scored again, so a killed run resumes with the chunks it had not
    finished and a run with other processes or on another cluster reuses
    them. Only the images of the missing chunks are extracted (once each,
    through ``cache``).

    Executors:

    * default: a :class:`~concurrent.futures.ProcessPoolExecutor` of
      ``processes`` (matching and MAGSAC hold the GIL for a large part of the
      time, so threads do not scale); features are extracted first in this
      process's threads (:func:`extract_many` into the cache, none kept in
      memory). Workers do not receive features
      through pickling: each gets the list of cache files once, at start-up,
      and reads the ``.npz`` files it needs itself, keeping the last
      ``WORKER_FEATURES`` in memory, so memory per worker stays bounded
      whatever the number of images. Workers are started with ``spawn`` (not
      ``fork``: the calling process may hold threads — OpenCV, TensorFlow,
      FAISS/OpenMP — that a fork would copy in an undefined state), run OpenCV
      with ``cpu_count // processes`` threads and die with this process
      (:func:`imgsim.distributed.die_with_parent`).
    * ``workers`` or ``scheduler``: Dask (:func:`imgsim.distributed.client`).
      Extraction runs on the workers in shards of ``EXTRACT_SHARD`` images
      (each image's content digest is computed there too), then the missing
      chunks run as tasks that read the cache files. ``cache.folder`` and the
      images must be visible to every worker at the same path
      (:func:`imgsim.distributed.check_shared`).

    Results are the same whatever the executor.

    Parameters
    ----------
    pairs : iterable of (str or path, str or path)
        Image files. Matching is not symmetric: (a, b) and (b, a) are
        different pairs. Repeated pairs are scored once.
    config : SiftConfig, optional
    cache : FeatureCache, optional
        Where features and pair chunks are stored; by default a temporary
        folder, deleted on return.
    processes : int, optional
        Pool processes; default ``os.cpu_count()``. 1 scores in this process.
        Unused with Dask.
    progress : bool
        tqdm bars over extraction and pairs.
    keep_matches : bool
        Also return each pair's verified matches (for building a COLMAP
        database, :mod:`imgsim.reconstruct`).
    workers : int, optional
        Score on a local Dask cluster of this many worker processes.
    scheduler : str or dask.distributed.Client, optional
        Score on an existing Dask cluster (``tcp://HOST:PORT``).

    Returns
    -------
    list of PairScore
        In the order of ``pairs``; each equal to ``pair_score(a, b, config)``.
        With ``keep_matches``, a list of ``(PairScore, inliers)`` where
        ``inliers`` is a uint32 array of shape (n_inliers, 2) of keypoint
        indices ``(index_a, index_b)`` into each image's :class:`Features`.
    """
    from imgsim import distributed

    config = config or SiftConfig()
    pairs = [tuple(pair) for pair in pairs]
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError("pairs must be (path_a, path_b) tuples")
    pairs = [(os.fspath(a), os.fspath(b)) for a, b in pairs]
    cpus = os.cpu_count() or 1
    on_dask = distributed.enabled(scheduler, workers)
    if on_dask:
        if not hasattr(scheduler, "submit"):
            distributed.check(scheduler, workers)
    else:
        processes = cpus if processes is None else processes
        if not _is_int(processes) or processes < 1:
            raise ValueError(f"processes must be an integer >= 1, got {processes!r}")
    if not pairs:
        return []
    if cache is None:
        with tempfile.TemporaryDirectory(prefix="imgsim-sift-") as folder:
            return score_pairs(pairs, config, FeatureCache(folder), processes, progress, keep_matches,
                               workers=workers, scheduler=scheduler)

    paths = list(dict.fromkeys(p for pair in pairs for p in pair))
    number = {p: i for i, p in enumerate(paths)}
    with contextlib.ExitStack() as stack:
        if on_dask:
            dask_client = stack.enter_context(distributed.client(scheduler, workers))
            distributed.check_shared(dask_client, cache.folder)
            paths = [os.path.abspath(p) for p in paths]  # workers may run elsewhere
            files = _cache_files_on_cluster(dask_client, paths, config, cache, progress)
        else:
            files = _cache_files_here(paths, config, cache)
        names = [os.path.basename(f) for f in files]
        todo = sorted(dict.fromkeys((number[a], number[b]) for a, b in pairs),
                      key=lambda ab: (names[ab[0]], names[ab[1]]))  # neighbours share image a
        chunks = _chunks(todo)
        chunk_files = [_chunk_file(os.path.abspath(cache.folder), config,
                                   [(names[a], names[b]) for a, b in chunk])
                       for chunk in chunks]
        results = [_read_chunk(file, len(chunk)) for file, chunk in zip(chunk_files, chunks)]
        missing = [i for i, r in enumerate(results) if r is None]
        with cache._lock:
            cache.chunk_hits += len(chunks) - len(missing)
            cache.chunk_misses += len(missing)
        bar = []

        def finished(i, value):
            results[i] = value
            if progress and not bar:  # opened here, after any extraction bar has closed
                from tqdm.auto import tqdm
                bar.append(tqdm(total=len(todo), desc="pairs", unit="pair",
                                initial=len(todo) - sum(len(chunks[j]) for j in missing)))
            if bar:
                bar[0].update(len(chunks[i]))

        if missing and on_dask:
            tasks = [_cluster_task(chunks[i], files, paths, config, chunk_files[i]) for i in missing]
            for i, value in zip(missing, distributed.run_tasks(dask_client, _score_chunk_task, tasks,
                                                               progress, desc="pairs", unit="chunk")):
                results[i] = value
        elif missing:
            needed = sorted({image for i in missing for pair in chunks[i] for image in pair})
            # into the cache, not into memory: scoring reads the cache files, the last few kept
            extract_many([paths[i] for i in needed], config, cache, progress=progress, keep=False)
            if processes == 1:
                for i in missing:
                    finished(i, _chunk_results(chunks[i], lambda k: _load_features(files[k], paths[k], config),
                                               config, chunk_files[i]))
            else:
                with ProcessPoolExecutor(min(processes, len(missing)),
                                         mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_init_worker,
                                         initargs=(files, paths, config, max(1, cpus // processes),
                                                   True, os.getpid())) as pool:
                    futures = {pool.submit(_score_chunk, chunks[i], chunk_files[i]): i for i in missing}
                    for future in as_completed(futures):
                        finished(futures[future], future.result())
        if bar:
            bar[0].close()
    by_key = {key: result for chunk, values in zip(chunks, results) for key, result in zip(chunk, values)}
    out = [by_key[number[a], number[b]] for a, b in pairs]
    return out if keep_matches else [score for score, _ in out]


def _cluster_task(chunk, files, paths, config, out_file):
    """Arguments of one Dask scoring task: only the chunk's own images travel."""
    images = sorted({image for pair in chunk for image in pair})
    local = {image: k for k, image in enumerate(images)}
    return ([files[i] for i in images], [paths[i] for i in images],
            [(local[a], local[b]) for a, b in chunk], config, out_file)


def shortlist_pairs(embeddings, k, index="auto"):
    """Candidate pairs: each image with its ``k`` nearest neighbours by embedding.

    Parameters
    ----------
    embeddings : array-like of shape (n, dim)
    k : int
        Neighbours per image (Euclidean), ``1 <= k <= n - 1``.
    index : {"auto", "exact", "flat", "ivf", "hnsw", "ivfpq"}
        How neighbours are found (:func:`imgsim.index.self_knn`): ``"auto"``
        searches exactly up to ``imgsim.index.EXACT_UP_TO`` images and with
        :meth:`imgsim.index.Index.for_size`'s approximate index above.

    Returns
    -------
    list of (int, int)
        ``(i, j)`` row indices with ``i < j``, sorted, each pair once: (i, j)
        is kept when j is among i's neighbours or i among j's. Between
        ``n·k/2`` and ``n·k`` pairs (fewer if an approximate index returns
        fewer than ``k`` neighbours for some image).
    """
    from imgsim.index import self_knn

    neighbours = self_knn(embeddings, k, index)
    rows = np.repeat(np.arange(len(neighbours)), neighbours.shape[1])
    cols = neighbours.ravel()
    keep = (rows != cols) & (cols >= 0)
    lo, hi = np.minimum(rows, cols)[keep], np.maximum(rows, cols)[keep]
    return [(int(i), int(j)) for i, j in sorted(set(zip(lo.tolist(), hi.tolist())))]
