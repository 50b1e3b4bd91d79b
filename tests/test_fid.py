import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import classifiers
import common
import data
import evaluate
import fid


def random_inception_state(seed=0):
    """A random but well-scaled state dict for the FID network: He-scaled convs and
    BatchNorm statistics near identity keep activations O(1) through all 94 layers."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, v in fid.FIDInceptionV3().state_dict().items():
        if name.endswith("conv.weight"):
            state[name] = torch.randn(v.shape, generator=g) * math.sqrt(2 / v[0].numel())
        elif name.endswith("bn.weight") or name.endswith("running_var"):
            state[name] = 0.5 + torch.rand(v.shape, generator=g)
        elif name.endswith("bn.bias") or name.endswith("running_mean"):
            state[name] = torch.randn(v.shape, generator=g) * 0.1
        elif name.startswith("fc."):
            state[name] = torch.randn(v.shape, generator=g) * 0.05
        else:
            state[name] = v  # num_batches_tracked
    return state


@pytest.fixture(scope="module")
def weights():
    return random_inception_state()


@pytest.fixture(scope="module")
def oracle(weights):
    """pytorch-fid's InceptionV3 with the same random weights (its download patched out)."""
    import pytorch_fid.inception as pi

    original = pi.load_state_dict_from_url
    pi.load_state_dict_from_url = lambda *a, **k: weights
    try:
        yield pi.InceptionV3([pi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    finally:
        pi.load_state_dict_from_url = original


def make_folder(root, n, seed, smooth):
    rng = np.random.RandomState(seed)
    root.mkdir()
    for i in range(n):
        img = rng.rand(48, 48, 3)
        if smooth:  # a different distribution: blurred blobs
            img = np.cumsum(np.cumsum(img - 0.5, 0), 1)
            img = (img - img.min()) / (np.ptp(img) + 1e-9)
        Image.fromarray((img * 255).astype(np.uint8)).save(root / f"{i:03d}.png")
    return root


def test_state_dict_keys_match_pytorch_fid(oracle, weights):
    import pytorch_fid.inception as pi

    ours = fid.FIDInceptionV3().state_dict()
    assert set(ours) == set(weights)
    theirs = {
        k
        for k in pi.fid_inception_v3.__globals__["_inception_v3"](
            num_classes=1008, aux_logits=False, weights=None
        ).state_dict()
    }
    assert set(ours) == theirs


def test_pool3_matches_pytorch_fid(oracle, weights):
    model = fid.load_inception(weights)
    torch.manual_seed(1)
    x = torch.rand(4, 3, 64, 80)  # not square, not 299: the resize is part of the contract
    with torch.no_grad():
        ref = oracle(x)[0].flatten(1)
    ours, logits = model(x.contiguous(memory_format=torch.channels_last))
    assert ours.shape == (4, 2048) and logits.shape == (4, 1008)
    assert ref.abs().mean() > 0.05  # the random network is not degenerate
    assert torch.allclose(ours, ref, atol=1e-4, rtol=0), (ours - ref).abs().max()
    # Unfolded network (BatchNorm kept) is the same function.
    plain = fid.FIDInceptionV3().eval()
    plain.load_state_dict(weights)
    with torch.no_grad():
        assert torch.allclose(plain(x)[0], ref, atol=1e-4, rtol=0)
        gray = torch.rand(2, 1, 32, 32)
        assert torch.allclose(plain(gray)[0], plain(gray.repeat(1, 3, 1, 1))[0])


def test_fid_on_folders_matches_pytorch_fid(tmp_path, oracle, weights, monkeypatch):
    """The same statistics of the same folders (files read, batched, resized as pytorch-fid does); the
    Frechet distance between them is pytorch-fid's to 1e-6 (test_frechet_by_eigenvalues_...)."""
    import pytorch_fid.inception as pi
    from pytorch_fid import fid_score

    a = make_folder(tmp_path / "a", 10, seed=0, smooth=False)
    b = make_folder(tmp_path / "b", 10, seed=1, smooth=True)
    monkeypatch.setattr(pi, "load_state_dict_from_url", lambda *a_, **k: weights)
    theirs = pi.InceptionV3([pi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    model = fid.load_inception(weights)
    for folder, batch_size in [(a, 4), (b, 3)]:
        mu_ref, sigma_ref = fid_score.compute_statistics_of_path(str(folder), theirs, 5, 2048, "cpu", 0)
        mu, sigma = fid.stats(fid.activations(folder, model, batch_size=batch_size))
        assert np.allclose(mu, mu_ref, rtol=1e-4, atol=1e-5) and np.allclose(
            sigma, sigma_ref, rtol=1e-3, atol=1e-6
        )


def test_stats_npz_interchange_with_pytorch_fid(tmp_path, monkeypatch, capsys):
    from pytorch_fid import fid_score

    rng = np.random.RandomState(0)
    acts1, acts2 = rng.randn(50, 8), rng.randn(60, 8) + 0.3
    np.savez(
        tmp_path / "theirs.npz", mu=acts1.mean(0), sigma=np.cov(acts1, rowvar=False)
    )  # as pytorch-fid writes
    fid.save_stats(tmp_path / "ours.npz", *fid.stats(acts2))
    mu_t, s_t = fid_score.compute_statistics_of_path(
        str(tmp_path / "ours.npz"), None, 1, 8, "cpu"
    )  # their reader
    assert np.allclose(mu_t, acts2.mean(0))
    monkeypatch.setattr(fid, "load_inception", lambda *a, **k: None)
    value = fid.main([str(tmp_path / "theirs.npz"), str(tmp_path / "ours.npz")])
    expected = fid_score.calculate_frechet_distance(acts1.mean(0), np.cov(acts1, rowvar=False), mu_t, s_t)
    assert math.isclose(value, expected, rel_tol=1e-9)
    assert capsys.readouterr().out.startswith("FID: ")


def test_cli_save_stats_then_compare(tmp_path, capsys):
    folder = make_folder(tmp_path / "digits_like", 100, seed=0, smooth=True)  # more images than the 64 dims
    fid.main(["--save-stats", str(folder), str(tmp_path / "s.npz"), "--features", "digits"])
    mu, sigma = fid.load_stats(tmp_path / "s.npz")
    assert mu.shape == (64,) and sigma.shape == (64, 64)
    value = fid.main([str(folder), str(tmp_path / "s.npz"), "--features", "digits"])
    assert abs(value) < 1e-6  # a folder against its own statistics
    assert "FID(digits): " in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        fid.main([str(tmp_path / "missing"), str(tmp_path / "s.npz"), "--features", "digits"])
    assert e.value.code == 2 and capsys.readouterr().err == f"error: not found: {tmp_path / 'missing'}\n"


def test_stats_float64_unbiased():
    acts = np.random.RandomState(0).randn(7, 3).astype(np.float32)
    mu, sigma = fid.stats(acts)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    centred = acts.astype(np.float64) - acts.mean(0)
    assert np.allclose(sigma, centred.T @ centred / 6)


@pytest.mark.parametrize("n_a, n_b", [(2000, 1500), (100, 1500), (1500, 100)])
def test_frechet_by_eigenvalues_is_pytorch_fids_number(n_a, n_b):
    """256-d, full rank and singular (fewer samples than dimensions) on either side: the eigenvalues of
    sigma1 sigma2 give pytorch-fid's sqrtm number to 1e-6 relative."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.RandomState(0)
    a = rng.randn(n_a, 256)
    b = rng.randn(n_b, 256) @ rng.randn(256, 256) * 0.2 + 0.3
    ours = fid.frechet_distance(*fid.stats(a), *fid.stats(b))
    theirs = calculate_frechet_distance(*fid.stats(a), *fid.stats(b))
    assert ours == pytest.approx(theirs, rel=1e-6) and ours > 0


def test_frechet_closed_form_diagonal():
    rng = np.random.RandomState(0)
    mu1, mu2 = rng.randn(5), rng.randn(5)
    s1, s2 = rng.rand(5) + 0.1, rng.rand(5) + 0.1
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert math.isclose(fid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)), expected, rel_tol=1e-10)
    assert abs(fid.frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1))) < 1e-10


def test_frechet_singular_covariances_fall_back():
    mu = np.zeros(4)
    sigma = np.zeros((4, 4))  # rank 0: sqrtm of the product is not finite-friendly
    value = fid.frechet_distance(mu, sigma, mu + 1, sigma)
    assert math.isclose(value, 4.0, abs_tol=1e-4)


def test_kid_of_a_set_with_itself_is_near_zero():
    acts = np.random.RandomState(0).randn(400, 16)
    mean, std = fid.kid(acts, acts, subsets=20, subset_size=100)
    assert abs(mean) < 3 * std + 1e-3
    other = np.random.RandomState(1).randn(400, 16) + 0.5
    assert fid.kid(acts, other, subsets=20, subset_size=100)[0] > 10 * abs(mean)


def test_kid_matches_direct_formula():
    rng = np.random.RandomState(0)
    x, y = rng.randn(12, 4), rng.randn(12, 4) + 0.2
    k = lambda a, b: (a @ b / 4 + 1) ** 3
    m = 12
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    mean, std = fid.kid(x, y, subsets=3, subset_size=m)  # subsets of the whole set: every one is exact
    assert math.isclose(mean, xx + yy - 2 * xy, rel_tol=1e-10) and std < 1e-10


def test_inception_score_closed_forms():
    assert math.isclose(fid.inception_score(np.zeros((100, 1008)))[0], 1.0, rel_tol=1e-9)
    k = 7
    logits = np.full((700, 1008), -50.0)
    logits[np.arange(700), np.arange(700) % k] = 50.0  # confident, k classes equally often in every split
    mean, std = fid.inception_score(logits, splits=10)
    assert math.isclose(mean, k, rel_tol=1e-6) and std < 1e-6


def test_missing_weights_offline_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("GENSTUDY_OFFLINE")  # a download is tried, and fails as offline

    def offline(url, dst):
        raise OSError("network is unreachable")

    monkeypatch.setattr(common, "download_file", offline)
    with pytest.raises(common.UserError) as e:
        fid.load_inception()
    msg = str(e.value)
    assert msg.startswith(f"weights {fid.WEIGHTS_NAME} not found at {tmp_path / 'torch' / 'hub'}")
    assert "(download failed: network is unreachable)" in msg and f"download {fid.WEIGHTS_URL} to " in msg
    (tmp_path / "a").mkdir()
    with pytest.raises(SystemExit) as e:
        fid.main([str(tmp_path / "a"), str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith(f"error: weights {fid.WEIGHTS_NAME}")


def test_wrong_hash_refused(tmp_path, monkeypatch, capsys):
    bad = tmp_path / fid.WEIGHTS_NAME
    torch.save({"x": torch.zeros(1)}, bad)
    monkeypatch.setenv("FID_WEIGHTS", str(bad))
    with pytest.raises(common.UserError, match="sha256"):
        fid.load_inception()
    with pytest.raises(SystemExit) as e:
        fid.main([str(tmp_path), str(tmp_path), "--inception-weights", str(bad)])
    assert e.value.code == 2 and "sha256" in capsys.readouterr().err


def test_uint8_rounding_matches_saved_png(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    common.save_grid(x[:1], tmp_path / "one.png", nrow=1)
    png = np.asarray(Image.open(tmp_path / "one.png").convert("RGB"))  # a single image gets no padding
    ours = (evaluate.to_unit_uint8(x[:1])[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(png, ours)


def test_digits_net_accuracy_and_coverage():
    # The run's cached network (trained once per test run; that a retraining gives the same network
    # is test_runs.py's test_garbage_digits_net_cache_is_retrained), on held-out digits at 32 px.
    model = classifiers.load_classifier("digits")
    train, held = data.load_dataset("digits", 32, aug="none").split()
    x = torch.from_numpy(np.array(held.images)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        features, logits = model(x)
    assert features.shape == (len(held), 64)
    accuracy = (logits.argmax(1).numpy() == held.labels).mean()
    assert accuracy >= 0.97, accuracy
    covered, kl = classifiers.class_coverage(logits.numpy())
    assert covered == 10 and kl < 0.1
    covered, kl = classifiers.class_coverage(
        np.eye(10)[[3] * 95 + [4] * 5]
    )  # collapse onto one digit (+ a few 4s)
    assert covered == 2 and kl > 1.5


def test_diversity_and_farthest_closed_forms():
    triangle = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, np.sqrt(3.0)]])  # equilateral, side 2
    assert evaluate.diversity(triangle) == pytest.approx(2.0)
    assert evaluate.diversity(np.zeros((5, 3))) == 0.0  # a collapsed model repeats one image
    acts, real = np.array([[0.0], [10.0], [1.0], [-4.0]]), np.array([[0.0], [2.0]])
    # Distances to the nearest real point: 0, 8, 1, 4 -> worst first.
    assert list(evaluate.farthest_from(acts, real, k=3)) == [1, 3, 2]


def test_sharpness_closed_form_and_the_evaluators_grain_and_blur_ratio():
    stripes = torch.tensor([0.0, 1.0]).repeat(4).view(1, 1, 1, 8).expand(1, 1, 8, 8)  # columns 0 1 0 1 ...
    assert evaluate.sharpness(stripes) == pytest.approx(0.5)  # 1 between columns, 0 down them
    _, held = data.load_dataset("shapes", 32, aug="none").split()
    evaluator = evaluate.Evaluator("shapes", held, "shapes", 32, 500, "cpu")
    real = torch.from_numpy(np.array(held.images[-200:])).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert evaluator(real)["sharpness"] == pytest.approx(1.0, abs=0.1)  # other held-out images: about 1
    noisy = evaluator((real + 0.1 * torch.randn_like(real)).clamp(-1, 1))["sharpness"]
    blurred = evaluator(F.avg_pool2d(real, 3, 1, 1, count_include_pad=False))["sharpness"]
    assert noisy > 3 and blurred < 0.9  # 5.2 and 0.82 measured


def test_ssim_is_scikit_images_gaussian_ssim():
    from skimage.metrics import structural_similarity

    torch.manual_seed(0)
    x = torch.rand(3, 3, 24, 20)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    ours = evaluate.ssim(x.double(), y.double())
    for i in range(3):  # skimage's Wang et al. settings: Gaussian window, sigma 1.5, population variances
        ref = structural_similarity(
            x[i].double().numpy(),
            y[i].double().numpy(),
            channel_axis=0,
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert ours[i].item() == pytest.approx(ref, abs=2e-3)  # skimage also averages a cropped border
    assert evaluate.ssim(x, x).tolist() == pytest.approx([1.0] * 3)


def test_ssim_to_the_nearest_real_image_is_one_for_copies():
    _, held = data.load_dataset("digits", 16, aug="none").split()
    evaluator = evaluate.Evaluator("digits", held, "digits", 16, 5000, "cpu")
    copies = torch.from_numpy(np.array(held.images[:50])).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert evaluator(copies)["ssim_nearest"] == pytest.approx(1.0)  # each its own nearest held-out image
    noise = torch.rand(50, 1, 16, 16) * 2 - 1
    assert evaluator(noise)["ssim_nearest"] < 0.2


def test_evaluator_diversity_and_worst_samples(tmp_path):
    _, held = data.load_dataset("digits", 16, aug="none").split()
    evaluator = evaluate.Evaluator("digits", held, "digits", 16, 5000, "cpu")
    real = (
        torch.from_numpy(np.array(held.images[:100])).permute(0, 3, 1, 2).float() / 127.5 - 1
    )  # (100, 1, 16, 16)
    blank = torch.full((16, 1, 16, 16), -1.0)  # black squares: no digit at all
    fake = torch.cat([real, blank])
    row = evaluator(fake, tmp_path / "worst.png")
    assert row["diversity_real"] == pytest.approx(evaluate.diversity(evaluator.real_acts))
    assert 0.8 < row["diversity"] / row["diversity_real"] < 1.3
    worst = np.asarray(Image.open(tmp_path / "worst.png").convert("L"))
    assert worst.shape == (4 * 18 + 2, 4 * 18 + 2)
    # Every image in the worst grid is one of the 16 blank ones (black inside the white padding).
    cells = [worst[2 + 18 * i : 18 * (i + 1), 2 + 18 * j : 18 * (j + 1)] for i in range(4) for j in range(4)]
    assert all(c.max() == 0 for c in cells)
    collapsed = evaluator(real[:1].repeat(50, 1, 1, 1))
    assert collapsed["diversity"] == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def vgg_state():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.vgg16().state_dict()


def test_lpips_diversity_matches_lpips_package(vgg_state):
    import warnings

    lpips = pytest.importorskip("lpips")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oracle = lpips.LPIPS(net="vgg", lpips=False, pnet_rand=True, verbose=False).eval()
    ours = evaluate.lpips_vgg(vgg_state)
    for k in range(1, 6):  # the oracle's five slices hold the same layers of vgg16().features
        for idx, layer in getattr(oracle.net, f"slice{k}").named_children():
            layer.load_state_dict(ours[int(idx)].state_dict())
    x = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    i, j = torch.randint(12, (2, 40), generator=torch.Generator().manual_seed(0))
    keep = i != j
    with torch.no_grad():
        expected = oracle(x[i[keep]], x[j[keep]]).mean().item()
    assert evaluate.lpips_diversity(x, ours, pairs=40, seed=0, batch_size=7) == pytest.approx(
        expected, rel=1e-5
    )
    assert evaluate.lpips_diversity(x[:1].repeat(5, 1, 1, 1), ours) == pytest.approx(0.0, abs=1e-6)


def test_evaluator_adds_lpips_only_when_vgg_weights_exist(tmp_path, monkeypatch, vgg_state):
    _, held = data.load_dataset("digits", 16, aug="none").split()
    fake = torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache: no VGG
    monkeypatch.delenv("VGG_WEIGHTS", raising=False)
    assert "lpips" not in evaluate.Evaluator("digits", held, "digits", 16, 5000, "cpu")(fake)
    torch.save(vgg_state, tmp_path / "vgg.pth")
    monkeypatch.setattr(common, "find_pretrained", lambda name, *a, **k: tmp_path / "vgg.pth")
    row = evaluate.Evaluator("digits", held, "digits", 16, 5000, "cpu")(fake)
    assert row["lpips"] == pytest.approx(evaluate.lpips_diversity(fake, evaluate.lpips_vgg(vgg_state)))


def test_cli_two_statistics_files_need_no_network(tmp_path, monkeypatch, capsys):
    def no_network(*a, **k):
        raise AssertionError("a network was loaded for two .npz files")

    monkeypatch.setattr(fid, "load_inception", no_network)
    monkeypatch.setattr(classifiers, "load_classifier", no_network)
    rng = np.random.RandomState(0)
    a, b = rng.randn(50, 4), rng.randn(60, 4) + 1
    fid.save_stats(tmp_path / "a.npz", *fid.stats(a))
    fid.save_stats(tmp_path / "b.npz", *fid.stats(b))
    value = fid.main([str(tmp_path / "a.npz"), str(tmp_path / "b.npz")])
    assert value == pytest.approx(fid.frechet_distance(*fid.stats(a), *fid.stats(b)))
    assert capsys.readouterr().out.startswith("FID: ")
    (tmp_path / "bad.npz").write_bytes(b"not numpy")
    with pytest.raises(SystemExit) as e:
        fid.main([str(tmp_path / "a.npz"), str(tmp_path / "bad.npz")])
    assert e.value.code == 2 and "not a statistics file" in capsys.readouterr().err


def test_fid_bootstrap_interval_covers_the_true_fid_at_its_rate():
    """Fake features from a known Gaussian against exact real statistics: the true FID has a closed form
    (diagonal covariances: sum (m_i - 0)^2 + (s_i - 1)^2). The 95% interval fid +- 1.96 bootstrap sd
    covers it in about 95% of 200 draws, and the bootstrap sd matches the spread of FID over the draws."""
    m, s = np.array([0.5, 0.0, 0.0, 0.0]), np.array([1.2, 1.0, 1.0, 0.8])
    true_fid = float((m**2).sum() + ((s - 1) ** 2).sum())
    mu_real, sigma_real = np.zeros(4), np.eye(4)
    rng = np.random.default_rng(0)
    fids, sds = [], []
    for trial in range(200):
        acts = m + s * rng.standard_normal((1000, 4))
        fids.append(fid.frechet_distance(*fid.stats(acts), mu_real, sigma_real))
        sds.append(fid.fid_bootstrap(acts, mu_real, sigma_real, resamples=50, seed=trial))
    fids, sds = np.array(fids), np.array(sds)
    covered = np.mean(np.abs(fids - true_fid) <= 1.96 * sds)
    assert 0.88 <= covered <= 0.99, covered
    assert np.mean(sds) == pytest.approx(np.std(fids), rel=0.2)
