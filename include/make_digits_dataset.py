"""Write scikit-learn's bundled handwritten digits as JumpStart-style PNG class folders.

    python include/make_digits_dataset.py OUT_DIR [--seed 0]

Makes OUT_DIR/{training,validation,test}/{0..9}/*.png (a seeded, stratified 70/10/20
split of the 1,797 8x8 images), so the demo needs no download. Existing output is kept.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SPLITS = (("training", 0.7), ("validation", 0.1), ("test", 0.2))


def write_digits(out_dir: Path, seed: int = 0) -> Path:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    if all((out_dir / name).is_dir() for name, _ in SPLITS):
        return out_dir
    digits = load_digits()
    rng = np.random.default_rng(seed)
    for label in np.unique(digits.target):
        indices = rng.permutation(np.flatnonzero(digits.target == label))
        start = 0
        for position, (split, fraction) in enumerate(SPLITS):
            end = len(indices) if position == len(SPLITS) - 1 else start + round(fraction * len(indices))
            folder = out_dir / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for index in indices[start:end]:
                pixels = (digits.images[index] * (255.0 / 16.0)).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"digit_{index:04d}.png")
            start = end
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    print(write_digits(arguments.out_dir, arguments.seed))


if __name__ == "__main__":
    main()
