"""The suite is sealed from the machine it runs on.

- CPU only: CUDA is hidden from every test and every process a test starts, except under `-m gpu`
  (`make test-gpu`), where the tests marked `gpu` run and the rest are deselected.
- Its own caches: one temporary TORCH_HOME (empty: no pretrained weights) and one GENSTUDY_CACHE shared by
  the whole run (data, classifiers and FID statistics built once); a test that damages a cache takes a
  private copy first (`private_cache`).
- No environment of the caller's: the variables that choose weights, run_all.sh's settings and torchrun's
  rendezvous are removed; GENSTUDY_OFFLINE=1 tells the code not to try downloads.
- No network: every process (this one and, through tests/sealed/sitecustomize.py on PYTHONPATH, each
  subprocess) refuses connections and name lookups beyond this machine and logs them; the test that
  made one fails.
- Signal handlers: a run that raises inside a test leaves SIGINT/SIGTERM as they were before it.
"""

import importlib.util
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SEALED = Path(__file__).resolve().parent / "sealed"
sys.path.insert(0, str(ROOT))

# What the caller's shell may hold that would change what the code does.
CALLER_VARIABLES = (
    "FID_WEIGHTS VGG_WEIGHTS TORCH_HOME XDG_CACHE_HOME GENSTUDY_CACHE CUBLAS_WORKSPACE_CONFIG "
    "WORLD_SIZE RANK LOCAL_RANK MASTER_ADDR MASTER_PORT "
    "PYTHON RUNS NPROC DATA SEEDS CROP MINUTES FINAL_MINUTES MINUTES_PIPE COND_MINUTES COND_DDPM_MINUTES "
    "TRANS_MINUTES"
).split()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "gpu: needs a CUDA device; run by `make test-gpu`, skipped without one"
    )
    home = Path(tempfile.mkdtemp(prefix="genstudy-tests-"))
    config.sealed_home = home
    for name in CALLER_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(
        TORCH_HOME=str(home / "torch"),
        GENSTUDY_CACHE=str(home / "cache"),
        GENSTUDY_OFFLINE="1",
        GENSTUDY_NET_LOG=str(home / "network.log"),
        PYTHONPATH=os.pathsep.join([str(SEALED), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    if config.getoption("markexpr") != "gpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    spec = importlib.util.spec_from_file_location("network_seal", SEALED / "sitecustomize.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))  # the seal, installed on import

    import common

    common.CACHE_DIR = Path(os.environ["GENSTUDY_CACHE"])


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "sealed_home", ""), ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():  # always so outside `-m gpu`, which hides CUDA
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device (make test-gpu)"))


@pytest.fixture(autouse=True)
def sealed(request):
    """Fail the test that tried the network; put back the signal handlers a run installed."""
    log = Path(os.environ["GENSTUDY_NET_LOG"])
    seen = log.stat().st_size if log.exists() else 0
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in handlers.items():
        signal.signal(s, handler)
    attempts = log.read_text()[seen:] if log.exists() else ""
    if attempts and "network_attempts" not in request.fixturenames:
        pytest.fail(f"the test tried to reach the network: {attempts.strip()}")


@pytest.fixture
def network_attempts():
    """For the test of the seal itself: the attempts logged during the test, which then do not fail it."""
    log = Path(os.environ["GENSTUDY_NET_LOG"])
    seen = log.stat().st_size if log.exists() else 0
    return lambda: (log.read_text()[seen:] if log.exists() else "").splitlines()


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A copy of the run's shared cache, for a test that damages what it finds there."""
    import common

    cache = tmp_path / "cache"
    shutil.copytree(common.CACHE_DIR, cache) if common.CACHE_DIR.exists() else cache.mkdir()
    monkeypatch.setattr(common, "CACHE_DIR", cache)
    monkeypatch.setenv("GENSTUDY_CACHE", str(cache))
    return cache


@pytest.fixture
def image_tree(tmp_path):
    """A folder with every case the loader must handle: RGB, gray and RGBA PNGs,
    nested sub-folders, a corrupt PNG, a non-image file."""
    rng = np.random.RandomState(0)
    root = tmp_path / "images"
    (root / "cats" / "nested" / "deeper").mkdir(parents=True)
    (root / "dogs").mkdir()
    Image.fromarray(rng.randint(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / "cats" / "rgb.png")
    Image.fromarray(rng.randint(0, 255, (30, 30, 3), dtype=np.uint8)).save(
        root / "cats" / "nested" / "deeper" / "deep.jpg"
    )
    Image.fromarray(rng.randint(0, 255, (32, 32), dtype=np.uint8), mode="L").save(root / "dogs" / "gray.png")
    Image.fromarray(rng.randint(0, 255, (36, 36, 4), dtype=np.uint8), mode="RGBA").save(
        root / "dogs" / "rgba.png"
    )
    (root / "dogs" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (root / "dogs" / "notes.txt").write_text("not an image")
    return root


def png_folder(root, n, res=64, seed=0):
    """n random RGB PNGs of res x res under root."""
    rng = np.random.RandomState(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.randint(0, 255, (res, res, 3), dtype=np.uint8)).save(root / f"{i:04d}.png")
    return root
