"""Image folders as calibration data: pixels against numpy computed from the same bytes."""
import numpy as np
import pytest
from conftest import SAMPLES
from PIL import Image

from onnxzip.cli import main
from onnxzip.errors import InputError, UsageError
from onnxzip.graph.io import InputSpec, load_arrays
from onnxzip.images import ImageRecipe, load_folder


def spec(shape, name="image"):
    return [InputSpec(name, np.dtype(np.float32), shape)]


def write(folder, images, ext="png"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:03d}.{ext}")
    return folder


def digits(n=40):
    x = load_arrays(SAMPLES / "calib_digit.npz")["image"][:n, 0]  # (n, 8, 8) in [0, 1]
    return np.round(x * 255).astype(np.uint8)


def test_grayscale_folder_reads_the_pixels(tmp_path):
    imgs = digits()
    sub = write(tmp_path / "a" / "nested", imgs[20:])  # read recursively
    write(tmp_path / "a", imgs[:20])
    got = load_folder(tmp_path / "a", spec((None, 1, 8, 8)), ImageRecipe())["image"]
    assert got.shape == (40, 1, 8, 8) and got.dtype == np.float32
    expect = np.concatenate([imgs[:20], imgs[20:]])  # sorted paths: a/000.png.. before a/nested/000.png..
    order = sorted([f"{i:03d}.png" for i in range(20)] + [f"nested/{i:03d}.png" for i in range(20)])
    assert order[-1].startswith("nested") and sub.is_dir()
    np.testing.assert_allclose(got[:, 0], expect / 255.0, atol=1e-7)


def test_rgb_recipe_bgr_mean_std_nhwc(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    write(tmp_path, imgs)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    recipe = ImageRecipe(mean=mean, std=std, bgr=True, layout="nhwc")
    got = load_folder(tmp_path, spec((None, 6, 7, 3)), recipe)["image"]
    expect = (imgs[..., ::-1] / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-6)
    nchw = load_folder(tmp_path, spec((None, 3, 6, 7)), ImageRecipe(mean=mean, std=std, bgr=True))["image"]
    np.testing.assert_allclose(nchw, expect.transpose(0, 3, 1, 2), rtol=1e-6, atol=1e-6)


def test_resize_keeps_orientation(tmp_path):
    """A horizontal gradient stays horizontal: height and width are not swapped by the resize."""
    img = np.tile(np.linspace(0, 255, 12).astype(np.uint8), (6, 1))  # (H 6, W 12), bright to the right
    write(tmp_path, [img])
    got = load_folder(tmp_path, spec((None, 1, 3, 6)), ImageRecipe(size=(3, 6)))["image"][0, 0]
    assert got.shape == (3, 6) and np.all(np.diff(got, axis=1) > 0) and np.allclose(got[0], got[2])


def test_sixteen_bit_and_hidden_files(tmp_path):
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "a.png")  # mode I;16
    (tmp_path / "._a.png").write_bytes(b"resource fork, not an image")  # macOS metadata: skipped
    (tmp_path / ".cache").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / ".cache" / "b.png")
    got = load_folder(tmp_path, spec((None, 1, 8, 8)), ImageRecipe())["image"]
    assert got.shape == (1, 1, 8, 8) and np.allclose(got, 32768 / 65535, atol=1e-4)
    rgb = load_folder(tmp_path, spec((None, 3, 8, 8)), ImageRecipe())["image"]
    assert rgb.shape == (1, 3, 8, 8) and np.allclose(rgb, 32768 / 65535, atol=1e-4)


def test_resize_and_subset(tmp_path):
    levels = np.arange(10, dtype=np.uint8) * 20
    write(tmp_path, [np.full((16, 12), v, np.uint8) for v in levels], ext="jpg")  # flat images survive JPEG
    got = load_folder(tmp_path, spec((None, 1, None, None)), ImageRecipe(size=(4, 5), max_samples=4))["image"]
    assert got.shape == (4, 1, 4, 5)
    values = np.round(got[:, 0, 0, 0] * 255)
    assert len(set(values)) == 4 and set(values) <= set(levels.astype(float))
    again = load_folder(tmp_path, spec((None, 1, None, None)), ImageRecipe(size=(4, 5), max_samples=4))["image"]
    np.testing.assert_array_equal(got, again)  # the subset is seeded


def test_bad_folders_and_shapes(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no PNG or JPEG"):
        load_folder(tmp_path / "empty", spec((None, 1, 8, 8)), ImageRecipe())
    write(tmp_path / "bad", digits(2))
    (tmp_path / "bad" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="broken.png: cannot read the image"):
        load_folder(tmp_path / "bad", spec((None, 1, 8, 8)), ImageRecipe())
    write(tmp_path / "ok", digits(2))
    with pytest.raises(InputError, match="takes height 8 only"):
        load_folder(tmp_path / "ok", spec((None, 1, 8, 8)), ImageRecipe(size=(16, 8)))
    with pytest.raises(InputError, match="dynamic height or width"):
        load_folder(tmp_path / "ok", spec((None, 1, None, 8)), ImageRecipe())
    with pytest.raises(InputError, match="is not a float image batch"):
        load_folder(tmp_path / "ok", spec((None, 64)), ImageRecipe())
    with pytest.raises(InputError, match="5 channels"):
        load_folder(tmp_path / "ok", spec((None, 8, 8, 5)), ImageRecipe(layout="nhwc"))
    with pytest.raises(UsageError, match="--mean 0.1,0.2: the model takes 3 channels: give one value or 3"):
        load_folder(tmp_path / "ok", spec((None, 3, 8, 8)), ImageRecipe(mean=(0.1, 0.2)))
    with pytest.raises(UsageError, match="--std 0.5,0.5: the model takes 1 channel: give one value$"):
        load_folder(tmp_path / "ok", spec((None, 1, 8, 8)), ImageRecipe(std=(0.5, 0.5)))
    with pytest.raises(InputError, match="2 inputs"):
        load_folder(tmp_path / "ok", spec((None, 1, 8, 8)) + spec((None, 1, 8, 8), "other"), ImageRecipe())


def test_cli_zips_from_one_folder_for_all(tmp_path, capsys):
    folder = write(tmp_path / "calib", digits(64))
    out = tmp_path / "z.onnx"
    rc = main(["zip", str(SAMPLES / "cnn_digit.onnx"), str(SAMPLES / "cnn_parity.onnx"), "--data", str(folder),
               "--names", "digit,parity", "--share", "0", "-o", str(out), "-q"])
    assert rc == 0 and out.is_file()
    import onnxruntime as ort
    x = load_arrays(SAMPLES / "test_digit.npz")["image"][:32]
    zipped = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["digit/logits"], {"image": x})[0]
    ref = ort.InferenceSession(str(SAMPLES / "cnn_digit.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    np.testing.assert_allclose(zipped, ref, atol=1e-4)
    from onnxzip import zip_models  # at share 0.5 the statistics read the pixels: folder and .npz agree
    kw = dict(share=0.5, quiet=True, names=("digit", "parity"))
    models = [str(SAMPLES / "cnn_digit.onnx"), str(SAMPLES / "cnn_parity.onnx")]
    a = zip_models(models, [str(folder)], **kw).report
    b = zip_models(models, [{"image": digits(64)[:, None] / np.float32(255)}], **kw).report
    assert [t["rel_err"] for t in a["tasks"]] == pytest.approx([t["rel_err"] for t in b["tasks"]], rel=1e-4)
    (tmp_path / "none").mkdir()
    rc = main(["zip", str(SAMPLES / "cnn_digit.onnx"), str(SAMPLES / "cnn_parity.onnx"), "--data", str(tmp_path / "none"),
               "-o", str(tmp_path / "y.onnx"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "no PNG or JPEG images" in err and err.count("\n") == 1
