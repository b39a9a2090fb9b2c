"""kshot.data.toy (iris, digits) and kshot.data.folder (a user's image folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kshot.data.folder import load_folder, load_images
from kshot.data.toy import load_digits, load_iris
from kshot.errors import KShotError

# --- scikit-learn's bundled sets ---------------------------------------------------------------


def test_load_iris() -> None:
    iris = load_iris()
    assert iris.images.shape == (150, 4) and iris.images.dtype == torch.float32
    assert iris.class_names == ("setosa", "versicolor", "virginica")
    assert iris.sizes.tolist() == [50, 50, 50]
    assert iris.item_shape == (4,)
    # setosa has the shortest petals: every setosa petal length < every other class's
    petal_length = iris.images[:, 2]
    assert float(petal_length[:50].max()) < float(petal_length[50:].min())


def test_load_digits() -> None:
    from sklearn.datasets import load_digits as sklearn_load_digits

    digits = load_digits()
    assert digits.images.shape == (1797, 1, 8, 8) and digits.images.dtype == torch.uint8
    assert digits.class_names == tuple(str(d) for d in range(10))
    assert int(digits.sizes.sum()) == 1797 and digits.n_classes == 10
    assert int(digits.images.min()) == 0 and int(digits.images.max()) == 255
    bunch = sklearn_load_digits()
    order = np.argsort(bunch.target, kind="stable")
    expected = np.rint(bunch.images[order] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(digits.images[:, 0].numpy(), expected)
    assert digits.sizes.tolist() == np.bincount(bunch.target).tolist()


# --- folders of images -------------------------------------------------------------------------


def stroke_image(size: int, dark_ink_on_light: bool, row: int = 5) -> Image.Image:
    """A ``size`` x ``size`` grayscale image with one horizontal stroke at ``row``."""
    ink, paper = (0, 255) if dark_ink_on_light else (255, 0)
    pixels = np.full((size, size), paper, dtype=np.uint8)
    pixels[row : row + 2, 2:-2] = ink
    return Image.fromarray(pixels, mode="L")


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """root/b_cat (2 PNGs, scanned: dark ink) and root/a_dog (3 images, bright ink), plus noise."""
    root = tmp_path / "pets"
    (root / "b_cat").mkdir(parents=True)
    (root / "a_dog").mkdir()
    stroke_image(28, dark_ink_on_light=True, row=3).save(root / "b_cat" / "2.png")
    stroke_image(56, dark_ink_on_light=True, row=10).save(root / "b_cat" / "1.PNG")
    stroke_image(28, dark_ink_on_light=False, row=20).save(root / "a_dog" / "z.png")
    stroke_image(28, dark_ink_on_light=False, row=10).convert("RGB").save(root / "a_dog" / "m.jpg")
    stroke_image(28, dark_ink_on_light=False, row=0).save(root / "a_dog" / "a.bmp")
    (root / "a_dog" / "notes.txt").write_text("not an image")
    (root / "a_dog" / ".hidden.png").write_bytes(b"macOS metadata, not an image")
    (root / "README.md").write_text("files at the top level are not classes")
    return root


def test_load_folder_classes_order_and_counts(image_tree: Path) -> None:
    dataset = load_folder(image_tree, image_size=28)
    assert dataset.class_names == ("a_dog", "b_cat")
    assert dataset.sizes.tolist() == [3, 2]
    assert dataset.images.shape == (5, 1, 28, 28) and dataset.images.dtype == torch.uint8
    assert dataset.name == "pets"
    file_names = [Path(f).name for f in dataset.meta["files"]]
    assert file_names == ["a.bmp", "m.jpg", "z.png", "1.PNG", "2.png"]
    # stroke rows survive in file order (1.PNG was 56x56 with its stroke at rows 10-11 -> row 5)
    stroke_rows = dataset.images[:, 0].float().mean(dim=2).argmax(dim=1).tolist()
    assert stroke_rows == [0, 10, 20, 5, 3]


def test_load_folder_auto_inversion_gives_bright_ink_on_dark(image_tree: Path) -> None:
    dataset = load_folder(image_tree, image_size=28, invert="auto")
    corners = dataset.images[:, 0, -1, -1]  # background pixel of every image
    assert corners.tolist() == [0, 0, 0, 0, 0]
    assert (dataset.images[:, 0].amax(dim=(1, 2)) == 255).all()


def test_load_folder_forced_inversion(image_tree: Path) -> None:
    as_stored = load_folder(image_tree, image_size=28, invert=False)
    inverted = load_folder(image_tree, image_size=28, invert=True)
    assert as_stored.images[:, 0, -1, -1].tolist() == [0, 0, 0, 255, 255]
    assert torch.equal(inverted.images, 255 - as_stored.images)


def test_load_folder_resizes_and_names(image_tree: Path) -> None:
    dataset = load_folder(image_tree, image_size=14, name="my-pets")
    assert dataset.images.shape == (5, 1, 14, 14) and dataset.name == "my-pets"


def test_load_images_matches_load_folder(image_tree: Path) -> None:
    dataset = load_folder(image_tree, image_size=28)
    queries = load_images([image_tree / "b_cat" / "2.png", str(image_tree / "a_dog" / "a.bmp")])
    assert queries.shape == (2, 1, 28, 28) and queries.dtype == torch.uint8
    assert torch.equal(queries[0], dataset.images[4]) and torch.equal(queries[1], dataset.images[0])


def test_load_images_errors(image_tree: Path) -> None:
    with pytest.raises(KShotError, match="no image files given"):
        load_images([])
    with pytest.raises(KShotError, match="missing.png does not exist"):
        load_images([image_tree / "missing.png"])
    with pytest.raises(KShotError, match="notes.txt does not decode"):
        load_images([image_tree / "a_dog" / "notes.txt"])


def test_load_folder_missing_root(tmp_path: Path) -> None:
    with pytest.raises(KShotError, match="nowhere does not exist"):
        load_folder(tmp_path / "nowhere")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(KShotError, match="is not a folder"):
        load_folder(tmp_path / "file.png")


def test_load_folder_without_class_folders(tmp_path: Path) -> None:
    stroke_image(28, dark_ink_on_light=True).save(tmp_path / "loose.png")
    with pytest.raises(KShotError, match="has no class folders"):
        load_folder(tmp_path)


def test_load_folder_empty_class_folder(image_tree: Path) -> None:
    (image_tree / "c_empty").mkdir()
    (image_tree / "c_empty" / "readme.txt").write_text("no images here")
    with pytest.raises(KShotError, match="c_empty holds no images"):
        load_folder(image_tree)


def test_load_folder_undecodable_image_names_the_file(image_tree: Path) -> None:
    (image_tree / "b_cat" / "x.png").write_bytes(b"\x89PNG garbage, not really a png")
    with pytest.raises(KShotError, match=r"x\.png does not decode") as raised:
        load_folder(image_tree)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"image_size": 0}, "image_size must be a positive integer"),
     ({"image_size": 2.5}, "image_size must be a positive integer"),
     ({"invert": "yes"}, "invert must be True, False or 'auto'")],
)
def test_load_folder_rejects_bad_options(image_tree: Path, options: dict, message: str) -> None:
    with pytest.raises(KShotError, match=message):
        load_folder(image_tree, **options)
