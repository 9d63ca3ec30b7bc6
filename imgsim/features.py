"""Backbone feature maps of photos and of augmented copies, computed once and cached on disk.

The frozen part of the embedding network (preprocessing and each backbone up
to its cut layer, :func:`imgsim.model.frozen_stems`) gives the same output
for the same pixels whatever is trained after it. Fast-mode training
(``TrainConfig(mode="fast")``) therefore runs it once per photo and per
augmented copy, here, and trains only the rest of the network on the cached
maps: seconds per fold for a head on frozen features, instead of minutes.

A photo's entry is one ``.npy`` file of shape (copies + 1, h, w, c), float16:
copy 0 is the photo itself, copies 1.. are augmented with
:func:`imgsim.augment.augment_batch` (seeded from the photo's content and
``seed``). The key is a SHA-256 of the file's bytes and everything that
changes the maps (input size, backbone width and weights, cut layer,
augmentation settings, number of copies, seed, Keras version), so a
changed photo or setting never reads a stale entry, and entries are shared
by every recipe and fold that needs them. Entries are written atomically.
"""

import hashlib
import io
import json
import os

import numpy as np

from imgsim.fileio import atomic_write_bytes
from imgsim.images import BadFiles, check_on_error, file_digest, load_images


def default_cache_dir():
    """``$XDG_CACHE_HOME/imgsim/features``, by default ``~/.cache/imgsim/features``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "imgsim", "features")


def stem_key(embedding, alpha, augment, copies, seed):
    """Everything except the photo that determines a cache entry, as a JSON string."""
    import keras

    from imgsim.model import cut_layer_name, imagenet_weights_name

    weights = embedding.weights
    if weights == "imagenet":
        weights = imagenet_weights_name(alpha)
    elif weights is not None:
        weights = file_digest(weights)
    return json.dumps({"image_size": embedding.image_size, "alpha": alpha, "weights": weights,
                       "cut": cut_layer_name(embedding, alpha), "augment": augment.to_dict() if copies else None,
                       "copies": copies, "seed": seed, "keras": keras.__version__}, sort_keys=True)


class FeatureCache:
    """Cut-layer feature maps of photos and their augmented copies, on disk.

    Parameters
    ----------
    folder : str or None
        Default :func:`default_cache_dir`.
    """

    def __init__(self, folder=None):
        self.folder = folder or default_cache_dir()
        self._stems = {}  # EmbeddingConfig (JSON) -> its frozen stems, built once per cache object

    def _path(self, key):
        return os.path.join(self.folder, key[:2], key + ".npy")

    def maps(self, paths, embedding, augment, copies, seed=0, on_error="raise", bad=None,
             batch_size=32, progress=False):
        """Feature maps of ``paths`` for every backbone of ``embedding``.

        Parameters
        ----------
        paths : sequence of str
        embedding : EmbeddingConfig
            Input size, backbone(s) and ``trainable_layers`` (which sets the cut).
        augment : AugmentConfig
        copies : int
            Augmented copies per photo besides the photo itself.
        seed : int
        on_error : {"raise", "skip"}
            A photo that does not decode: stop, or leave it out (``ok`` False)
            and record it in ``bad``.
        batch_size : int
            Images per forward pass.
        progress : bool

        Returns
        -------
        maps : list of numpy.ndarray of shape (n_ok, copies + 1, h, w, c), float16
            One per backbone (``embedding.alphas()``).
        ok : numpy.ndarray of shape (len(paths),), bool
        """
        from imgsim.augment import augment_batch, batch_seed, build_augmentation
        from imgsim.model import frozen_stems

        check_on_error(on_error)
        bad = BadFiles() if bad is None else bad
        paths = list(paths)
        digests = [file_digest(p) if os.path.isfile(p) else None for p in paths]
        alphas = embedding.alphas()
        keys = [[hashlib.sha256(f"{d};{stem_key(embedding, a, augment, copies, seed)}".encode())
                 .hexdigest() if d else None for d in digests] for a in alphas]
        missing = sorted({i for per in keys for i, k in enumerate(per)
                          if k is None or not os.path.isfile(self._path(k))})
        ok = np.ones(len(paths), bool)
        if missing:
            images, decoded = load_images([paths[i] for i in missing], embedding.image_size,
                                          on_error=on_error, bad=bad, progress=progress)
            ok[np.array(missing)[~decoded]] = False
            todo = [i for i, d in zip(missing, decoded) if d]
            config_key = json.dumps(embedding.to_dict(), sort_keys=True)
            if config_key not in self._stems:
                self._stems[config_key] = frozen_stems(embedding)
            stems = self._stems[config_key]
            pipeline = build_augmentation(augment) if copies else None
            per_batch = max(1, batch_size // (copies + 1))
            starts = range(0, len(todo), per_batch)
            if progress:
                from tqdm.auto import tqdm
                starts = tqdm(starts, desc="caching features", unit="batch")
            for start in starts:
                chunk = list(range(start, min(start + per_batch, len(todo))))
                batch = []
                for j in chunk:
                    image = images[j:j + 1].astype(np.float32)
                    batch.append(image)
                    if copies:
                        seed_j = batch_seed(seed, int(digests[todo[j]][:8], 16))
                        batch.append(augment_batch(pipeline, np.repeat(image, copies, 0), seed_j))
                batch = np.concatenate(batch)
                for stem, per in zip(stems, keys):
                    out = np.asarray(stem.predict_on_batch(batch), np.float16)
                    out = out.reshape(len(chunk), copies + 1, *out.shape[1:])
                    for j, maps in zip(chunk, out):
                        buffer = io.BytesIO()
                        np.save(buffer, maps)
                        atomic_write_bytes(self._path(per[todo[j]]), buffer.getvalue())
        result = []
        for per in keys:  # filled in place: no second copy of the (large) stacked array
            rows = np.flatnonzero(ok)
            first = np.load(self._path(per[rows[0]])) if len(rows) else np.zeros((copies + 1, 0, 0, 0))
            out = np.empty((len(rows), *first.shape), np.float16)
            for j, i in enumerate(rows):
                out[j] = first if j == 0 else np.load(self._path(per[i]))
            result.append(out)
        return result, ok
