"""Tables, splits, and the bad-input errors with their exact messages."""

import csv
import io
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import SAMPLE, shared_path
from imgsim.data import label_ids, load_table, select, split_scenes
from imgsim.images import BadFiles, load_image, load_images
from imgsim.errors import ConfigError, DataLayoutError, ImageDecodeError


def rgb_pattern(h=48, w=64):
    """A deterministic non-symmetric colour image."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 4) % 256, (y * 5) % 256, (x * y) % 256], axis=-1).astype(np.uint8)


def write_labels(root, rows, columns=("dataset", "scene", "image", "rotation_matrix", "translation_vector")):
    with open(root / "train_labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)


# --------------------------------------------------------------------------- tables


def test_sample_imc_table_matches_its_csv():
    table = load_table(SAMPLE)
    with open(os.path.join(SAMPLE, "train_labels.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(table) == len(rows)
    assert set(zip(table["dataset"], table["scene"], table["image"])) == {
        (r["dataset"], r["scene"], os.path.join("train", r["dataset"], r["image"])) for r in rows}
    assert all(os.path.isfile(p) for p in table["path"])
    assert table["scene"].nunique() >= 8


def test_full_shared_data_table():
    table = load_table(shared_path("data"))
    assert len(table) == 424
    assert table.groupby(["dataset", "scene"]).ngroups == 65
    assert table["dataset"].nunique() == 13


def test_folder_layout(tmp_path):
    for scene, n in (("alpha", 2), ("beta", 3)):
        os.makedirs(tmp_path / "root" / scene)
        for i in range(n):
            Image.fromarray(rgb_pattern()).save(tmp_path / "root" / scene / f"{i}.png")
    (tmp_path / "root" / "beta" / "notes.txt").write_text("not listed: not an image extension")
    table = load_table(tmp_path / "root")
    assert list(table["scene"]) == ["alpha"] * 2 + ["beta"] * 3
    assert set(table["dataset"]) == {"root"}
    assert table["image"].iloc[0] == os.path.join("alpha", "0.png")


def test_split_is_by_scene_seeded_and_disjoint():
    table = load_table(shared_path("data"))
    split = split_scenes(table, val_fraction=0.15, test_fraction=0.25, seed=3)
    train, val, test = set(split.train), set(split.val), set(split.test)
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(table["dataset"] + "/" + table["scene"])
    assert (len(val), len(test)) == (round(0.15 * 65), round(0.25 * 65))
    assert split_scenes(table, 0.15, 0.25, seed=3) == split
    assert split_scenes(table, 0.15, 0.25, seed=4) != split
    # No training image comes from a held-out scene.
    rows = select(table, split.train)
    assert not set(rows["dataset"] + "/" + rows["scene"]) & (val | test)


def test_outliers_never_in_a_split_and_always_lone_labels(mini_imc):
    labels = pd.read_csv(mini_imc / "train_labels.csv")
    labels.loc[len(labels)] = [labels["dataset"][0], "outliers", "o1.png", "nan", "nan"]
    labels.loc[len(labels)] = [labels["dataset"][0], "outliers", "o2.png", "nan", "nan"]
    for name in ("o1.png", "o2.png"):
        Image.fromarray(rgb_pattern()).save(mini_imc / "train" / labels["dataset"][0] / name)
    labels.to_csv(mini_imc / "train_labels.csv", index=False)
    table = load_table(mini_imc)
    split = split_scenes(table, 0.25, 0.25, seed=0)
    assert not any(k.endswith("/outliers") for k in split.train + split.val + split.test)
    test = select(table, split.test, outliers=True)
    ids = label_ids(test)
    outlier_ids = ids[(test["scene"] == "outliers").to_numpy()]
    assert len(outlier_ids) == 2 and len(set(outlier_ids)) == 2
    assert not set(outlier_ids) & set(ids[(test["scene"] != "outliers").to_numpy()])


# --------------------------------------------------------------------------- bad input


def test_missing_columns(mini_imc):
    write_labels(mini_imc, [["d", "x.jpg"]], columns=("dataset", "image"))
    with pytest.raises(DataLayoutError) as err:
        load_table(mini_imc)
    assert str(err.value) == f"{mini_imc / 'train_labels.csv'}: missing columns: scene"


def test_listed_file_does_not_exist(mini_imc):
    table = load_table(mini_imc)
    os.remove(table["path"][0])
    with pytest.raises(ImageDecodeError) as err:
        load_table(mini_imc)
    assert str(err.value) == f"{table['path'][0]}: listed in train_labels.csv but does not exist"


def test_zero_byte_file(mini_imc):
    path = load_table(mini_imc)["path"][1]
    open(path, "wb").close()
    with pytest.raises(ImageDecodeError) as err:
        load_table(mini_imc)
    assert str(err.value) == f"{path}: empty file (0 bytes)"
    with pytest.raises(ImageDecodeError) as err:
        load_image(path)
    assert str(err.value) == f"{path}: empty file (0 bytes)"


def test_truncated_jpeg(mini_imc):
    path = load_table(mini_imc)["path"][2]
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError) as err:
        load_image(path)
    assert str(err.value) == f"{path}: truncated image data"


def test_non_image_file(mini_imc):
    path = load_table(mini_imc)["path"][0]
    open(path, "w").write("dataset,scene\nthis is a CSV, not a photo\n")
    with pytest.raises(ImageDecodeError) as err:
        load_image(path)
    assert str(err.value) == f"{path}: not an image"


def test_corrupt_png_data(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(rgb_pattern()).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"IDAT") + 8
    data[start:start + 40] = bytes(40)  # zero out the start of the compressed stream
    path = tmp_path / "broken.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageDecodeError) as err:
        load_image(path)
    assert str(err.value) == f"{path}: corrupt image data"


def test_tiny_image(tmp_path):
    path = tmp_path / "tiny.png"
    Image.fromarray(rgb_pattern(16, 20)).save(path)
    with pytest.raises(ImageDecodeError) as err:
        load_image(path)
    assert str(err.value) == f"{path}: image is 20x16 pixels, smaller than 32 px"


def test_missing_file_and_directory_instead_of_file(tmp_path):
    with pytest.raises(ImageDecodeError) as err:
        load_image(tmp_path / "nope.jpg")
    assert str(err.value) == f"{tmp_path / 'nope.jpg'}: no such file"
    os.makedirs(tmp_path / "dir.jpg")
    with pytest.raises(ImageDecodeError) as err:
        load_image(tmp_path / "dir.jpg")
    assert str(err.value) == f"{tmp_path / 'dir.jpg'}: not a file"


def test_scene_with_one_image(mini_imc):
    labels = pd.read_csv(mini_imc / "train_labels.csv")
    scene, dataset = labels["scene"][0], labels["dataset"][0]
    drop = labels.index[labels["scene"] == scene][1:]
    labels.drop(drop).to_csv(mini_imc / "train_labels.csv", index=False)
    with pytest.raises(DataLayoutError) as err:
        load_table(mini_imc)
    assert str(err.value) == (f"{mini_imc / 'train_labels.csv'}: scene '{scene}' of dataset "
                              f"'{dataset}' has 1 usable image, at least 2 needed")


def test_header_only_empty_csv_and_empty_value(mini_imc):
    csv_path = mini_imc / "train_labels.csv"
    write_labels(mini_imc, [])
    with pytest.raises(DataLayoutError) as err:
        load_table(mini_imc)
    assert str(err.value) == f"{csv_path}: no rows"
    csv_path.write_text("")
    with pytest.raises(DataLayoutError) as err:
        load_table(mini_imc)
    assert str(err.value) == (f"{csv_path}: empty file, expected a header with columns "
                              "dataset, scene, image")
    write_labels(mini_imc, [["d", "s", "a.jpg", "nan", "nan"], ["d", " ", "b.jpg", "nan", "nan"]])
    with pytest.raises(DataLayoutError) as err:
        load_table(mini_imc)
    assert str(err.value) == f"{csv_path}: row 3: empty value in column 'scene'"


def test_image_listed_twice(mini_imc):
    labels = pd.read_csv(mini_imc / "train_labels.csv")
    pd.concat([labels, labels.iloc[[0]]]).to_csv(mini_imc / "train_labels.csv", index=False)
    with pytest.raises(DataLayoutError) as err:
        load_table(mini_imc)
    assert str(err.value) == (f"{mini_imc / 'train_labels.csv'}: image "
                              f"'{labels['dataset'][0]}/{labels['image'][0]}' is listed more than once")


def test_binary_labels_file(mini_imc):
    (mini_imc / "train_labels.csv").write_bytes(b"\xff\xfe\x00\x81garbage\x00\x9c" * 10)
    with pytest.raises(DataLayoutError) as err:
        load_table(mini_imc)
    assert str(err.value) == f"{mini_imc / 'train_labels.csv'}: not a CSV file (UnicodeDecodeError)"


def test_missing_root_and_empty_root(tmp_path):
    with pytest.raises(DataLayoutError) as err:
        load_table(tmp_path / "absent")
    assert str(err.value) == f"{tmp_path / 'absent'}: no such directory"
    with pytest.raises(DataLayoutError) as err:
        load_table(tmp_path)
    assert str(err.value) == f"{tmp_path}: no train_labels.csv and no <scene>/<image> folders with images"


def test_too_few_scenes_to_split(mini_imc):
    table = load_table(mini_imc)
    two = table[table["scene"].isin(sorted(table["scene"].unique())[:2])]
    with pytest.raises(ConfigError) as err:
        split_scenes(two)
    assert str(err.value) == (f"{mini_imc / 'train_labels.csv'}: 2 scene(s), at least 3 needed "
                              "for a train/val/test split by scene")


def test_skip_mode_drops_and_counts_bad_files(mini_imc):
    table = load_table(mini_imc)
    open(table["path"][0], "wb").close()  # empty: caught by load_table
    os.remove(table["path"][4])  # missing: caught by load_table
    open(table["path"][7], "w").write("text")  # not an image: caught when decoding
    bad = BadFiles()
    kept = load_table(mini_imc, on_error="skip", bad=bad)
    assert len(kept) == len(table) - 2 and len(bad) == 2
    images, ok = load_images(kept["path"], 32, on_error="skip", bad=bad)
    assert len(bad) == 3 and ok.sum() == len(kept) - 1 and len(images) == len(kept) - 1
    assert f"{table['path'][7]}: not an image" in bad.summary().splitlines()
    with pytest.raises(ConfigError, match="on_error must be one of"):
        load_table(mini_imc, on_error="ignore")
