"""Does the shapes judge measure what a person sees? Its accuracy (iCLEVR's top-k rule) and FID(shapes)
of held-out real shapes images against the rest of the held-out set, as they are and under changes a
person barely notices (pixel noise, a 3x3 blur) and changes a person does see (an extra object, one
object's colour or shape changed, scored against the original labels).

  python benchmarks/judge_robustness.py            # the cached shapes classifier (trained on first use)

The same numbers hold the judge in tests/test_cond.py (test_shapes_judge_sees_what_a_person_sees).
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import classifiers  # noqa: E402
import data  # noqa: E402
import fid  # noqa: E402

SIGMAS = (0.0, 0.01, 0.02, 0.05, 0.1)


def noisy(x, sigma, seed=0):
    """x in [0, 1] plus Gaussian pixel noise of std sigma (in [0, 1] units: 0.02 is 5 of 255 levels)."""
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return (x + sigma * noise).clamp(0, 1)


def blurred(x, size=3):
    return F.avg_pool2d(x, size, stride=1, padding=size // 2, count_include_pad=False)


def changed(labels, change, rng):
    """The label list of an image a person would call wrong: one more object, or one object of another
    colour, or of another shape."""
    labels = list(labels)
    if change == "extra object":
        return labels + [int(rng.choice([i for i in range(24) if i not in labels]))]
    i = rng.randint(len(labels))
    colour, kind = divmod(labels[i], 3)
    if change == "wrong colour":
        options = [c * 3 + kind for c in range(8) if c != colour]
    else:
        options = [colour * 3 + k for k in range(3) if k != kind]
    # not into an object already there, unless there is no other (three shapes of one colour)
    labels[i] = int(rng.choice([o for o in options if o not in labels] or options))
    return labels


def rendered(conditions, change=None, seed=0):
    """Images of `conditions` drawn as the data set draws them (optionally changed) -> [0, 1] tensor."""
    rng = np.random.RandomState(seed)
    images = []
    for labels in conditions:
        drawn = changed(labels, change, rng) if change else labels
        img = data._to_uint8(data._draw_shapes(drawn, rng), 32, 3, None)  # as the data set is cached
        images.append(torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(images)


def measure(model, n=1000):
    """-> [(change, accuracy, FID(shapes))] on n held-out images (FID against the other held-out ones)."""
    held = data.load_dataset("shapes", 32, aug="none").split()[1]
    images = torch.from_numpy(np.array(held.images)).permute(0, 3, 1, 2).float() / 255
    x, labels, reference = images[:n], torch.from_numpy(np.array(held.labels[:n])), images[n : 2 * n]
    ref_stats = fid.stats(fid.activations(reference, model))
    conditions = [row.nonzero().flatten().tolist() for row in labels]

    def score(name, imgs):
        with torch.no_grad():
            logits = torch.cat([model(b)[1] for b in imgs.split(500)])
        fd = fid.frechet_distance(*fid.stats(fid.activations(imgs, model)), *ref_stats)
        return name, classifiers.accuracy(logits, labels), fd

    rows = [score(f"noise sigma {s:g}", noisy(x, s)) for s in SIGMAS]
    rows += [score("blur 3x3", blurred(x)), score("blur 5x5", blurred(x, 5))]
    changes = (None, "extra object", "wrong colour", "wrong shape")
    rows += [score(change or "drawn again, unchanged", rendered(conditions, change)) for change in changes]
    return rows


def main():
    rows = measure(classifiers.load_classifier("shapes"))
    print("| held-out shapes (1,000) | accuracy | FID(shapes) |\n|---|---|---|")
    for name, acc, fd in rows:
        print(f"| {name} | {acc:.3f} | {fd:.1f} |")


if __name__ == "__main__":
    main()
