"""Phase 1's face judge (evaluate.py --faces): MTCNN's last network as a feature space, checked against
facenet-pytorch's own forward, and the share of samples with a face found, on real faces and on noise."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import align
import data
import evaluate


@pytest.fixture(scope="module")
def detector():
    return align.make_detector("cpu")


def test_mtcnn_features_are_onets_own_layers(detector):
    """At ONet's 48x48 input (no resizing), the features feed ONet's heads to its own outputs."""
    torch.manual_seed(0)
    x = torch.rand(5, 3, 48, 48)
    features, logits = evaluate.MTCNNFeatures(detector.onet)(x)
    boxes, landmarks, prob = detector.onet((x * 255 - 127.5) * 0.0078125)
    assert features.shape == (5, 256) and logits.shape == (5, 2)
    torch.testing.assert_close(torch.softmax(logits, 1), prob)
    torch.testing.assert_close(detector.onet.dense6_2(features), boxes)
    torch.testing.assert_close(detector.onet.dense6_3(features), landmarks)


def save(images, folder):
    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:06d}.png")


def test_faces_are_found_in_faces_and_not_in_noise_and_scored_on_one_reference(tmp_path, capsys):
    faces = np.array(data.load_dataset("lfw", 64, channels=3, aug="none").images)  # (100, 64, 64, 3)
    noise = np.random.default_rng(0).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    save(faces[:24], tmp_path / "faces_run" / "generated")
    save(noise, tmp_path / "noise_run" / "generated")  # another resolution than the reference's 128
    save(faces[24:], tmp_path / "reference")
    evaluate.main(
        ["--faces", str(tmp_path / "reference"), str(tmp_path / "faces_run"), str(tmp_path / "noise_run")]
    )
    real, fake = (json.loads((tmp_path / n / "faces.json").read_text()) for n in ("faces_run", "noise_run"))
    assert real["faces"] >= 0.9 and fake["faces"] == 0.0
    # One common reference: the held-out sixth of the 76 reference faces (76 // 6), as a run splits them.
    assert real["n_real"] == fake["n_real"] == 12 and real["reference"] == fake["reference"]
    assert real["fid_mtcnn"] * 10 < fake["fid_mtcnn"]
    assert "fid_inception" not in real and "no Inception FID" in capsys.readouterr().err  # no weights here


def test_a_run_without_samples_or_a_too_small_reference_is_one_line_exit_2(tmp_path, capsys):
    save(np.zeros((6, 8, 8, 3), np.uint8), tmp_path / "small")
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--faces", str(tmp_path / "small"), str(tmp_path / "run")])
    assert e.value.code == 2 and capsys.readouterr().err.strip().endswith(
        "too few for a reference (12+ images)"
    )
    save(np.zeros((12, 8, 8, 3), np.uint8), tmp_path / "reference")
    (tmp_path / "run").mkdir()
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--faces", str(tmp_path / "reference"), str(tmp_path / "run")])
    assert e.value.code == 2 and capsys.readouterr().err.strip().endswith(
        f"no images in {tmp_path / 'run' / 'generated'}"
    )
