"""The default data set: scikit-learn's bundled handwritten digits (1797 real 8×8 images, 10 classes).

It ships inside scikit-learn, so a recipe runs end to end with no download and no data folder.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from edgekd.data.pools import InMemoryPool, Source
from edgekd.data.preprocess import Preprocess

DIGITS_MAX_VALUE = 16.0  # pixels are counts of set bits in 4×4 blocks of the original 32×32 bitmaps: 0..16


def load_digits_source(preprocess: Preprocess) -> Source:
    """All digits as one pool (no official test split); mean and std are computed from the training split."""
    digits = load_digits()
    images = torch.from_numpy(digits.images / DIGITS_MAX_VALUE).float().unsqueeze(1)
    labels = np.asarray(digits.target, dtype=np.int64)
    return Source(
        name="digits",
        train_pool=InMemoryPool(images, labels, preprocess),
        test_pool=None,
        class_names=[str(name) for name in digits.target_names],
        mean=None,
        std=None,
    )
