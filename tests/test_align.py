"""align.py on real photos: skimage's astronaut (one face), rotated and downscaled
copies, coffee (no face), a corrupt file; the CLI's manifest and resumability."""

import csv

import numpy as np
import pytest
from PIL import Image
from skimage import data

import align


@pytest.fixture(scope="module")
def detector():
    return align.make_detector("cpu")


def landmark_errors(face, detector, size):
    """Detect the aligned face again: per-landmark distance (px) to the scaled reference."""
    found = align.detect([face], detector)[0]
    assert found is not None, "the aligned face was not detected again"
    return np.linalg.norm(found[1] - align.REF_LANDMARKS * size / 128, axis=1)  # (5,)


def astronaut():
    return Image.fromarray(data.astronaut())


@pytest.mark.parametrize("variant", ["as is", "rotated 15 deg", "downscaled 2x"])
def test_aligned_face_lands_on_the_reference(detector, variant):
    img = astronaut()
    if variant == "rotated 15 deg":
        img = img.rotate(15, resample=Image.BICUBIC, expand=True)
    elif variant == "downscaled 2x":
        img = img.resize((256, 256), Image.LANCZOS)
    face = align.align_face(img, 128, detector)
    assert face.size == (128, 128) and face.mode == "RGB"
    err = landmark_errors(face, detector, 128)
    assert err[:2].max() < 0.07 * 128, err  # eyes within 7% of the image size
    assert err.mean() < 0.10 * 128, err  # all five within 10% on average


def test_unaligned_face_misses_by_tens_of_pixels(detector):
    # The control: the raw photo resized to 128 puts the face far from the reference.
    raw = astronaut().resize((128, 128), Image.LANCZOS)
    err = landmark_errors(raw, detector, 128)
    assert err.mean() > 20, err


def test_size_64_scales_the_reference(detector):
    face = align.align_face(astronaut(), 64, detector)
    assert face.size == (64, 64)
    err = landmark_errors(face, detector, 64)
    assert err[:2].max() < 0.07 * 64 and err.mean() < 0.10 * 64, err


def test_no_face_gives_none(detector):
    assert align.align_face(Image.fromarray(data.coffee()), 128, detector) is None


def test_object_arrays_from_mtcnn_are_converted():
    # facenet-pytorch under numpy 2 returns ragged object arrays; detect() must hand back floats.
    class Fake:
        def detect(self, img, landmarks):
            pts = np.empty(2, dtype=object)
            pts[0] = np.arange(10.0).reshape(5, 2)
            pts[1] = np.arange(10.0, 20.0).reshape(5, 2)
            return (
                np.array([[0, 0, 1, 1], [0, 0, 2, 2]], dtype=object),
                np.array([0.8, 0.95], dtype=object),
                pts,
            )

    ((prob, lm),) = align.detect([Image.new("RGB", (8, 8))], Fake())
    assert prob == 0.95 and lm.dtype == np.float64 and lm.shape == (5, 2) and lm[0, 0] == 10.0


def test_cli_manifest_statuses_and_rerun(tmp_path, monkeypatch, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "people").mkdir(parents=True)
    (src / "things").mkdir()
    astronaut().save(src / "people" / "astronaut.jpg")
    Image.fromarray(data.coffee()).save(src / "things" / "coffee.png")
    (src / "things" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    counts = align.main([str(src), str(dst), "--size", "64"])
    assert counts == {"aligned": 1, "no_face": 1, "unreadable": 1}
    out = Image.open(dst / "people" / "astronaut.png")
    assert out.size == (64, 64)
    assert not (dst / "things" / "coffee.png").exists()
    with open(dst / "manifest.csv", newline="") as f:
        rows = {r["file"]: r for r in csv.DictReader(f)}
    assert rows["people/astronaut.jpg"]["status"] == "aligned"
    assert float(rows["people/astronaut.jpg"]["probability"]) > 0.9
    assert len(rows["people/astronaut.jpg"]["landmarks"].split()) == 10
    assert rows["things/coffee.png"]["status"] == "no_face"
    assert rows["things/broken.png"]["status"] == "unreadable"
    assert "aligned: 1, no_face: 1, unreadable: 1" in capsys.readouterr().out
    assert not list(dst.rglob("*.tmp*"))  # no temp files left behind

    # Second run: everything is in the manifest, so no detector is even built.
    def no_detection(*a, **k):
        raise AssertionError("re-run did detection work")

    monkeypatch.setattr(align, "make_detector", no_detection)
    assert align.main([str(src), str(dst), "--size", "64"]) == counts
    assert "0 to align" in capsys.readouterr().out


def test_cli_resumes_after_partial_run(tmp_path, detector, monkeypatch):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for i in range(3):
        astronaut().resize((256, 256)).save(src / f"a{i}.png")
    calls = []
    monkeypatch.setattr(align, "make_detector", lambda device=None: detector)
    real_detect = align.detect
    monkeypatch.setattr(
        align, "detect", lambda images, det: calls.append(len(images)) or real_detect(images, det)
    )
    # Simulate a run killed after the first image: its manifest has one row.
    align.main([str(src), str(dst), "--batch-size", "1"])
    lines = (dst / "manifest.csv").read_text().splitlines()
    (dst / "manifest.csv").write_text("\n".join(lines[:2]) + "\n")
    calls.clear()
    counts = align.main([str(src), str(dst), "--batch-size", "1"])
    assert calls == [1, 1] and counts["aligned"] == 3  # only the two missing images were detected


@pytest.mark.parametrize(
    "args, message", [(["/no/such/dir", "out"], "not a folder"), (["EMPTY", "out"], "no images")]
)
def test_cli_bad_input_exits_2(tmp_path, capsys, args, message):
    (tmp_path / "EMPTY").mkdir()
    args = [str(tmp_path / a) if a in ("EMPTY", "out") else a for a in args]
    with pytest.raises(SystemExit) as e:
        align.main(args)
    assert e.value.code == 2 and message in capsys.readouterr().err
