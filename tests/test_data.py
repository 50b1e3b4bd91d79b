import argparse
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import common
import data
import dcgan


def test_digits_builtin():
    ds = data.load_dataset("digits", 32, aug="none")
    assert len(ds) == 1797 and ds.classes == [str(i) for i in range(10)]
    x, y = ds[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.max() > 0.5  # ink reaches near white
    assert sorted(set(ds.labels.tolist())) == list(range(10))


def test_lfw_builtin_rgb_on_request():
    ds = data.load_dataset("lfw", 64, channels=3)
    assert len(ds) == 100
    assert ds[5][0].shape == (3, 64, 64)


def test_folder_with_every_case(image_tree):
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        ds = data.load_dataset(str(image_tree), 32, cond=True)
    # rgb.png, deep.jpg (nested twice), gray.png, rgba.png; corrupt.png skipped, notes.txt ignored
    assert len(ds) == 4
    assert ds.classes == ["cats", "dogs"]
    assert sorted(ds.labels.tolist()) == [0, 0, 1, 1]
    for i in range(len(ds)):
        x, _ = ds[i]
        assert x.shape == (3, 32, 32) and -1 <= x.min() and x.max() <= 1
    manifest = next(common.CACHE_DIR.glob("data/*.json"))
    meta = [json.loads(p.read_text()) for p in common.CACHE_DIR.glob("data/*.json")]
    skipped = [s for m in meta for s in m["skipped"]]
    assert any("corrupt.png" in s for s in skipped), manifest


def test_crop_takes_center(tmp_path):
    from PIL import Image

    img = np.zeros((218, 178), dtype=np.uint8)
    img[20:198, :] = 255  # a 178x178 white center inside black top/bottom bands
    (tmp_path / "f").mkdir()
    Image.fromarray(img).save(tmp_path / "f" / "a.png")
    x = data.load_dataset(str(tmp_path / "f"), 32, channels=1, crop=178)[0][0]
    assert x.min() > 0.9  # the black bands were cropped away


def test_mix_spec_lengths():
    digits, lfw = data.load_dataset("digits", 32), data.load_dataset("lfw", 32)
    mix = data.load_dataset("digits,lfw", 32)
    assert len(mix) == len(digits) + len(lfw) == 1897
    assert len(mix.classes) == 11 and mix.labels.max() == 10  # lfw's label follows the 10 digits


def test_cache_reuse_reads_no_images(image_tree, monkeypatch):
    with pytest.warns(UserWarning):
        first = data.load_dataset(str(image_tree), 32)

    def no_reads(*a, **k):
        raise AssertionError("image file opened although the cache exists")

    monkeypatch.setattr(common.Image, "open", no_reads)
    second = data.load_dataset(str(image_tree), 32)
    assert np.array_equal(np.asarray(first.images), np.asarray(second.images))
    # A changed file list is a new cache entry, not a stale hit.
    (image_tree / "dogs" / "new.png").write_bytes((image_tree / "dogs" / "gray.png").read_bytes())
    with pytest.raises(AssertionError, match="image file opened"):
        data.load_dataset(str(image_tree), 32)


def test_split_is_disjoint_and_deterministic():
    ds = data.load_dataset("digits", 32)
    train, held = ds.split()
    assert len(train) + len(held) == len(ds) and len(held) == len(ds) // 6
    train2, held2 = data.load_dataset("digits", 32).split()
    assert np.array_equal(np.asarray(held.images), np.asarray(held2.images))


@pytest.mark.filterwarnings("ignore:skipped")
@pytest.mark.parametrize(
    "make_args",
    [
        lambda tmp: ["--data", str(tmp / "missing")],
        lambda tmp: ["--data", str(tmp / "empty")],
        lambda tmp: ["--data", str(tmp / "only_text")],
        lambda tmp: ["--data", str(tmp / "only_corrupt")],
        lambda tmp: ["--data", "lfw", "--cond"],  # --cond needs >= 2 classes
    ],
)
def test_bad_data_is_one_line_exit_2(tmp_path, capsys, make_args):
    (tmp_path / "empty").mkdir()
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "a.txt").write_text("x")
    (tmp_path / "only_corrupt").mkdir()
    (tmp_path / "only_corrupt" / "a.png").write_bytes(b"garbage")
    with pytest.raises(SystemExit) as e:
        dcgan.main(make_args(tmp_path) + ["--out", str(tmp_path / "run"), "--max-steps", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err


def test_bad_flag_value_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        dcgan.main(["--aug", "sideways", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "argument --aug: invalid choice: 'sideways'" in capsys.readouterr().err


@pytest.mark.parametrize("channels", [1, 3])
def test_augment_modes_in_closed_form(channels):
    torch.manual_seed(0)
    x = torch.rand(200, channels, 8, 8) * 2 - 1
    assert torch.equal(data.augment(x, "none"), x)
    flipped = data.augment(x, "flip")  # each image as it is or mirrored left-right, about half of each
    same, mirrored = (flipped == x).all(dim=(1, 2, 3)), (flipped == x.flip(3)).all(dim=(1, 2, 3))
    assert (same | mirrored).all() and 70 < mirrored.sum() < 130
    # jitter on images of one grey level each: rotation (border padding), contrast and saturation
    # leave them flat, brightness moves each by up to 0.1 of the [0, 1] range (0.2 here).
    flat = (torch.rand(400, 1, 1, 1) * 1.2 - 0.6).expand(400, channels, 8, 8)
    shift = (data.augment(flat, "jitter") - flat).flatten(1)
    assert (shift.max(1).values - shift.min(1).values).max() < 1e-5
    assert shift[:, 0].abs().max() <= 0.2 + 1e-6 and shift[:, 0].min() < -0.18 and shift[:, 0].max() > 0.18
    # jitter on a vertical bar: a rotation of at most 5 degrees keeps it within a pixel of where it was.
    bar = -torch.ones(400, channels, 16, 16)
    bar[..., 7:9] = 1
    turned = data.augment(bar, "jitter")
    columns = turned.mean(dim=(1, 2)) - turned.mean(dim=(1, 2, 3))[:, None]  # (B, W)
    assert ((columns.argmax(1) >= 6) & (columns.argmax(1) <= 9)).all()
    y = data.augment(x, "jitter")  # clamped to the pixel range
    assert y.min() >= -1 and y.max() <= 1 and not torch.equal(x, y)
    # deluxe leaves flat images as they are: a crop of a constant is that constant, autocontrast has no
    # range to stretch.
    torch.testing.assert_close(data.augment(flat, "deluxe"), flat)


@pytest.mark.parametrize("channels", [1, 3])
def test_deluxe_crops_80_to_100_percent_and_stretches_contrast_half_the_time(channels):
    torch.manual_seed(0)
    # A left-right ramp in [-0.5, 0.5]: a crop of width w (a share of the side) resized back multiplies its
    # slope per pixel by w, between sqrt(0.8 * 3/4) and 1; autocontrast stretches it to [-1, 1].
    ramp = torch.linspace(-0.5, 0.5, 32).view(1, 1, 1, 32).expand(2000, channels, 32, 32).contiguous()
    y = data.augment(ramp, "deluxe")
    stretched = (y.amin(dim=(2, 3)) == -1).all(1) & (y.amax(dim=(2, 3)) == 1).all(1)  # (B,)
    kept = (y.amin(dim=(1, 2, 3)) >= -0.5 - 1e-6) & (y.amax(dim=(1, 2, 3)) <= 0.5 + 1e-6)
    assert (stretched ^ kept).all() and 900 < stretched.sum() < 1100
    slope = (y[..., 8:24].diff(dim=3).mean(dim=(1, 2, 3)) / (1 / 31)).abs()  # the middle: no border
    w = slope[kept]
    assert w.min() > math.sqrt(0.6) - 1e-3 and w.max() < 1 + 1e-4
    assert w.min() < 0.8 and w.median() < 0.97  # crops happen, and mostly not whole
    # Rows of a ramp are all alike, so the vertical crop shows only through the horizontal one's aspect.
    assert (y[kept].std(dim=2) < 1e-5).all()


def test_flip_flips_about_half():
    torch.manual_seed(0)
    x = torch.arange(8.0).view(1, 1, 1, 8).expand(1000, 1, 1, 8) / 8
    y = data.augment(x, "flip")
    flipped = (y[:, 0, 0, 0] > y[:, 0, 0, -1]).float().mean()
    assert 0.4 < flipped < 0.6
    assert torch.equal(y[y[:, 0, 0, 0] > 0.5][0], x[0].flip(2))


def test_batches_resume_same_order():
    ds = data.load_dataset("lfw", 32, aug="none")
    args = argparse.Namespace(batch_size=16, seed=3, workers=0)
    full = data.batches(ds, args, 0, device="cpu")
    seq = [next(full)[0] for _ in range(9)]  # crosses an epoch boundary (6 batches per epoch)
    resumed = data.batches(ds, args, 5, device="cpu")
    for i in range(5, 9):
        assert torch.equal(next(resumed)[0], seq[i])
    # Worker processes read the same batches in the same order.
    with_workers = data.batches(ds, argparse.Namespace(batch_size=16, seed=3, workers=2), 0, device="cpu")
    for i in range(9):
        assert torch.equal(next(with_workers)[0], seq[i])
    # The batches are the data's images in [-1, 1]: the first is batch_order's first 16, read sorted.
    first = np.sort(next(data.batch_order(len(ds), 16, 3, 0))[1])
    assert torch.equal(seq[0], torch.stack([ds[i][0] for i in first]))


def test_export_writes_the_cached_images_as_pngs_a_folder_a_class(tmp_path, capsys):
    data.main(["digits", str(tmp_path / "held"), "--res", "16", "--split", "heldout"])
    held = data.load_dataset("digits", 16, aug="none").split()[1]
    rows = (tmp_path / "held" / "labels.csv").read_text().splitlines()
    assert rows[0] == "file,label" and len(rows) == 1 + len(held) == 300
    for i in (0, 123, 298):
        file, label = rows[1 + i].split(",")
        assert (
            file == f"{held.classes[held.labels[i]]}/{i:06d}.png"
            and label == f'"{held.classes[held.labels[i]]}"'
        )
        assert np.array_equal(np.asarray(Image.open(tmp_path / "held" / file)), held.images[i][..., 0])
    # Read back as a folder: the same pixels, the class from the sub-folder.
    again = data.load_dataset(str(tmp_path / "held"), 16, channels=1, aug="none")
    assert sorted(again.classes) == held.classes and len(again) == len(held)
    with pytest.raises(SystemExit) as e:
        data.main(["/no/such/folder", str(tmp_path / "x")])
    assert e.value.code == 2 and capsys.readouterr().err == "error: data path not found: /no/such/folder\n"
