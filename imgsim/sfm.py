"""Incremental structure from motion of one cluster with pycolmap, from imgsim's own matches.

:func:`map_cluster` writes a COLMAP database itself — one camera per image
(or per group of images that share a size and EXIF camera, see
:class:`SfmConfig`), imgsim's keypoints on the stored pixel grid and its
verified matches — so COLMAP never reads an image file: any format imgsim
decodes (WebP included) reaches SfM, and sizes and EXIF focal lengths come
from imgsim's decoding. It then runs COLMAP's incremental mapper
(:func:`pycolmap.incremental_mapping`), optionally again from relaxed
initial-pair thresholds when the first models leave much of the cluster out,
and optionally a second pass that registers leftover images into the largest
model with relaxed registration thresholds.

Poses follow COLMAP's and IMC's convention: a world point X maps to camera
coordinates as ``R X + t``.
"""

import math
import os
from dataclasses import dataclass

import numpy as np

from imgsim.config import DictConfig, check_choice, check_range
from imgsim.errors import ConfigError, ImageDecodeError

CAMERA_MODES = ("auto", "single", "per_image")
DEFAULT_FOCAL_FACTOR = 1.2  # COLMAP's focal length guess without EXIF, × the longer side
FILM_DIAGONAL_MM = math.hypot(36.0, 24.0)  # what a 35 mm equivalent focal length refers to


@dataclass
class SfmConfig(DictConfig):
    """Cameras and COLMAP mapper settings of :func:`map_cluster`.

    Attributes
    ----------
    camera_mode : {"auto", "single", "per_image"}
        ``auto``: images with the same stored size and the same EXIF make,
        model and focal length share a camera, and so do images of one size
        without EXIF (frames of a video, a turntable series: EXIF is what
        frame extraction drops; one shared focal length is better
        constrained than one per image — measured on the hard benchmark's
        fox video and turntable, mAA 0.81 → 0.95 and 0.81 → 0.91); images
        with different EXIF cameras or focal lengths never share.
        ``per_image``: every image its own camera (intrinsics refined per
        image: tourist photos without EXIF from mixed cameras).
        ``single``: one camera per image size, EXIF or not.
    exif_focal : bool
        Use the EXIF focal length (35 mm equivalent, or focal length and focal
        plane resolution) as the initial focal length and mark it as a prior;
        otherwise, and without EXIF, ``DEFAULT_FOCAL_FACTOR`` × the longer side.
    init_min_num_inliers : int
        Inliers of the initial image pair (COLMAP 100).
    init_min_tri_angle : float
        Triangulation angle of the initial pair, degrees (COLMAP 16).
    init_num_trials : int
        Initial pairs tried per model (COLMAP 200).
    init_max_forward_motion : float
        In [0, 1]: initial pairs whose motion is more along the viewing
        direction than this are refused (COLMAP 0.95); a walk down a street
        or a video moving forward has no other pairs.
    abs_pose_min_num_inliers : int
        2D-3D inliers to register an image (COLMAP 30).
    abs_pose_min_inlier_ratio : float
        Inlier ratio to register an image (COLMAP 0.25).
    multiple_models : bool
        Start new models from the images a model leaves out.
    retry_below : float
        In [0, 1]: when the largest model holds less than this fraction of
        the cluster, map again from relaxed initial-pair thresholds (inliers
        and triangulation angle halved, forward motion allowed) and keep the
        run whose largest model is larger. 0: never. Measured: a street walk
        of 29 phone photos (opensfm lund) registers 0 at COLMAP's defaults
        and 21 after the retry.
    register_leftovers : bool
        After mapping, try to register the images no model holds into the
        largest model with halved registration thresholds (inliers, ratio).
        Measured: the street walk above 21 → 24 of 29 registered; the hard
        benchmark unchanged.
    max_seconds : float
        Time limit of one mapping run, in seconds, rounded up (0: none).
    """

    camera_mode: str = "auto"
    exif_focal: bool = True
    init_min_num_inliers: int = 100
    init_min_tri_angle: float = 16.0
    init_num_trials: int = 200
    init_max_forward_motion: float = 0.95
    abs_pose_min_num_inliers: int = 30
    abs_pose_min_inlier_ratio: float = 0.25
    multiple_models: bool = True
    retry_below: float = 0.5
    register_leftovers: bool = True
    max_seconds: float = 0.0

    def __post_init__(self):
        super().__post_init__()  # the field types, booleans included
        check_choice("camera_mode", self.camera_mode, CAMERA_MODES)
        for name, least in (("init_min_num_inliers", 8), ("init_num_trials", 1),
                            ("abs_pose_min_num_inliers", 4)):
            check_range(name, getattr(self, name), least, integer=True)
        for name, low, high in (("init_min_tri_angle", 0, 90), ("abs_pose_min_inlier_ratio", 0, 1),
                                ("init_max_forward_motion", 0, 1), ("retry_below", 0, 1),
                                ("max_seconds", 0, None)):
            check_range(name, getattr(self, name), low, high)


# --------------------------------------------------------------------------- cameras


def _exif_focal_px(exif, width, height):
    """Focal length in pixels of the stored image from EXIF, or None."""
    sub = exif.get_ifd(0x8769)  # the Exif IFD
    try:
        f35 = float(sub.get(0xA405) or 0)  # FocalLengthIn35mmFilm
        if f35 > 0:
            return f35 / FILM_DIAGONAL_MM * math.hypot(width, height)
        focal, x_res, unit = (sub.get(0x920A), sub.get(0xA20E), sub.get(0xA210))  # mm, px per unit
        mm_per_unit = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}.get(int(unit or 2))
        if focal and x_res and mm_per_unit and float(focal) > 0 and float(x_res) > 0:
            native = float(sub.get(0xA002) or width)  # PixelXDimension: the width x_res refers to
            return float(focal) * float(x_res) / mm_per_unit * width / native
    except (TypeError, ValueError, ZeroDivisionError):
        pass
    return None


def image_camera(path, exif_focal=True):
    """Camera facts of one image file, from its header (Pillow, no decoding).

    Returns
    -------
    dict with ``width``, ``height`` (the stored pixel grid, as COLMAP uses
    it), ``focal`` (pixels), ``prior`` (True when ``focal`` came from EXIF)
    and ``make_model`` (EXIF make and model, "" without EXIF).

    Raises
    ------
    ImageDecodeError
        The header cannot be read.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            width, height = img.size
            exif = img.getexif()
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ImageDecodeError(f"{path}: cannot read the image header ({exc})") from None
    focal = _exif_focal_px(exif, width, height) if exif_focal else None
    make_model = " ".join(str(exif.get(tag, "")).strip() for tag in (0x010F, 0x0110)).strip()
    return {"width": width, "height": height, "prior": focal is not None,
            "focal": focal if focal is not None else DEFAULT_FOCAL_FACTOR * max(width, height),
            "make_model": make_model}


def camera_groups(cameras, mode):
    """Which images share one COLMAP camera: a group id per image.

    Parameters
    ----------
    cameras : list of dict
        :func:`image_camera` of each image.
    mode : {"auto", "single", "per_image"}
        See :class:`SfmConfig`.

    Returns
    -------
    list of int, one per image, numbered in order of first appearance.
    """
    if mode not in CAMERA_MODES:
        raise ConfigError(f"camera_mode must be one of {CAMERA_MODES}, got {mode!r}")
    keys = []
    for k, cam in enumerate(cameras):
        size = (cam["width"], cam["height"])
        if mode == "single":
            keys.append(size)
        elif mode == "auto":
            exif = (cam["make_model"], round(cam["focal"], 1)) if cam["prior"] else (cam["make_model"],)
            keys.append(size + exif)
        else:
            keys.append(("image", k))
    ids = {}
    return [ids.setdefault(key, len(ids)) for key in keys]


# --------------------------------------------------------------------------- COLMAP


def _pycolmap():
    """Import pycolmap, keeping SIGTERM's handler as it was.

    pycolmap's glog installs a failure handler that prints a stack trace for
    SIGTERM, so a Jupyter kernel stopped the normal way (papermill, nbval)
    would look as if it had crashed.
    """
    import signal

    previous = signal.getsignal(signal.SIGTERM)
    import pycolmap

    try:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    except ValueError:  # not the main thread: leave it
        pass
    return pycolmap


def write_database(database, names, cameras, groups, keypoints, pairs, matches):
    """A COLMAP database of cameras, images, keypoints and verified matches.

    Parameters
    ----------
    database : str
        A new file (an existing one is replaced).
    names : list of str
        Image names (relative to the image folder; COLMAP never opens them).
    cameras : list of dict
        :func:`image_camera` of each image.
    groups : list of int
        :func:`camera_groups`: images with one id share a camera.
    keypoints : list of arrays of shape (n_i, 2)
        x, y on the stored pixel grid, COLMAP's convention (pixel centres at +0.5).
    pairs : list of (int, int)
        Indices into ``names``.
    matches : list of arrays of shape (m, 2)
        Verified keypoint index pairs of each pair.
    """
    pycolmap = _pycolmap()

    if os.path.exists(database):
        os.remove(database)
    camera_ids, rig_ids, image_ids = {}, {}, []
    with pycolmap.Database.open(database) as db:
        for name, cam, group in zip(names, cameras, groups):
            if group not in camera_ids:
                camera = pycolmap.Camera.create_from_model_name(
                    0, "SIMPLE_RADIAL", cam["focal"], cam["width"], cam["height"])
                camera.has_prior_focal_length = bool(cam["prior"])
                camera.camera_id = camera_ids[group] = db.write_camera(camera)
                rig = pycolmap.Rig()
                rig.add_ref_sensor(camera.sensor_id)
                rig_ids[group] = db.write_rig(rig)
            image = pycolmap.Image(name=name, camera_id=camera_ids[group])
            image.image_id = db.write_image(image)
            frame = pycolmap.Frame()
            frame.rig_id = rig_ids[group]
            frame.add_data_id(image.data_id)
            db.write_frame(frame)
            image_ids.append(image.image_id)
        for image_id, points in zip(image_ids, keypoints):
            db.write_keypoints(image_id, np.ascontiguousarray(points, np.float32).reshape(-1, 2))
        for (a, b), inliers in zip(pairs, matches):
            inliers = np.ascontiguousarray(inliers, np.uint32).reshape(-1, 2)
            db.write_matches(image_ids[a], image_ids[b], inliers)
            geometry = pycolmap.TwoViewGeometry()
            geometry.config = pycolmap.TwoViewGeometryConfiguration.UNCALIBRATED
            geometry.inlier_matches = inliers
            db.write_two_view_geometry(image_ids[a], image_ids[b], geometry)


def _options(config, min_model_size, threads, relax_init=False, relax_registration=False):
    pycolmap = _pycolmap()

    options = pycolmap.IncrementalPipelineOptions()
    options.min_model_size = min_model_size
    options.extract_colors = False
    options.num_threads = threads
    options.random_seed = 0
    options.multiple_models = config.multiple_models
    options.init_num_trials = config.init_num_trials
    if config.max_seconds:
        options.max_runtime_seconds = int(math.ceil(config.max_seconds))  # COLMAP takes whole seconds
    scale_init, scale_reg = (0.5 if relax_init else 1.0), (0.5 if relax_registration else 1.0)
    mapper = options.mapper
    mapper.init_min_num_inliers = max(8, int(config.init_min_num_inliers * scale_init))
    mapper.init_min_tri_angle = config.init_min_tri_angle * scale_init
    mapper.init_max_forward_motion = 1.0 if relax_init else config.init_max_forward_motion
    mapper.abs_pose_min_num_inliers = max(4, int(config.abs_pose_min_num_inliers * scale_reg))
    mapper.abs_pose_min_inlier_ratio = config.abs_pose_min_inlier_ratio * scale_reg
    return options


def _run_mapper(database, models_dir, options, input_path=""):
    pycolmap = _pycolmap()

    os.makedirs(models_dir, exist_ok=True)
    level = pycolmap.logging.minloglevel
    # COLMAP's per-image INFO lines and Ceres's routine warnings ("Linear solver failure ... not
    # positive definite": bundle adjustment retrying with more damping) would drown the bars;
    # GLOG_minloglevel, where set (imgsim -v sets 0), is what the user asked for
    asked = os.environ.get("GLOG_minloglevel", "")
    pycolmap.logging.minloglevel = max(level, int(asked) if asked.isdigit() else 2)
    try:
        found = pycolmap.incremental_mapping(database, models_dir, models_dir, options,
                                             input_path=input_path)
    finally:
        pycolmap.logging.minloglevel = level
    return sorted(found.values(), key=lambda rec: rec.num_reg_images(), reverse=True)


def _poses(rec):
    poses = {}
    for image in rec.images.values():
        if image.has_pose:
            pose = image.cam_from_world()
            poses[image.name] = {"R": pose.rotation.matrix().tolist(),
                                 "t": np.asarray(pose.translation).tolist()}
    return poses


def map_cluster(folder, names, cameras, keypoints, pairs, matches, config=None, min_model_size=3,
                threads=1):
    """Incremental SfM of one cluster.

    Parameters
    ----------
    folder : str
        Scratch folder of this cluster (database and models).
    names, cameras, keypoints, pairs, matches
        See :func:`write_database` (``groups`` come from ``config.camera_mode``).
    config : SfmConfig, optional
    min_model_size : int
        Smaller models are dropped.
    threads : int

    Returns
    -------
    list of dict
        One per model, largest first: ``{name: {"R": 3×3 list, "t": 3 list}}``.
    """
    config = config or SfmConfig()
    os.makedirs(folder, exist_ok=True)
    database = os.path.join(folder, "database.db")
    write_database(database, names, cameras, camera_groups(cameras, config.camera_mode), keypoints,
                   pairs, matches)
    models = _run_mapper(database, os.path.join(folder, "models"),
                         _options(config, min_model_size, threads))

    def largest(found):
        return found[0].num_reg_images() if found else 0

    if config.retry_below and largest(models) < config.retry_below * len(names):
        again = _run_mapper(database, os.path.join(folder, "models-retry"),
                            _options(config, min_model_size, threads, relax_init=True))
        if largest(again) > largest(models):
            models = again
    if config.register_leftovers and models and largest(models) < len(names):
        seed_dir = os.path.join(folder, "largest")
        os.makedirs(seed_dir, exist_ok=True)
        models[0].write(seed_dir)
        options = _options(config, min_model_size, threads, relax_registration=True)
        options.multiple_models = False
        grown = _run_mapper(database, os.path.join(folder, "models-leftovers"), options,
                            input_path=seed_dir)
        if largest(grown) > largest(models):
            models = [grown[0]] + models[1:]
    return sorted((_poses(rec) for rec in models), key=len, reverse=True)
