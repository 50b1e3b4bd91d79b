import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Every test (and every subprocess it starts) caches into a private folder."""
    import common

    cache = tmp_path_factory.mktemp("cache")
    os.environ["GENSTUDY_CACHE"] = str(cache)
    common.CACHE_DIR = cache
    yield cache


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
