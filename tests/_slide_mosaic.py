"""A slide made of real H&E patches (NCT-CRC-HE-100K samples in ../shared/data/nct-crc-he-tiles): pale pieces
(fat, mucin, stroma), a piece of every tissue class, single-patch pieces and glass, with the class of every cell;
for the tissue-mask tests and the slide pipeline's checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

NCT = "nct-crc-he-tiles"
TISSUE = ("ADI", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")


def mosaic_slide(shared: Path, out: Path, rows: int = 12, cols: int = 16, seed: int = 0) -> tuple[Path, np.ndarray]:
    """A slide at 0.5 µm/px made of real 224 px NCT-CRC-HE patches, one per grid cell (rotated / flipped): a
    pale piece (fat ADI, mucin MUC, stroma STR), a piece of every tissue class, five single-cell pieces, and
    background cells (the BACK patch: glass). Returns the PNG and the class of every cell."""
    rng = np.random.default_rng(seed)
    patches = {p.name.split("-")[0]: np.asarray(Image.open(p).convert("RGB")) for p in (shared / NCT).glob("*.tif")}
    yy, xx = np.mgrid[0:rows, 0:cols]
    cls = np.full((rows, cols), "BACK", dtype=object)
    pale = ((yy - 3.0) / 2.6) ** 2 + ((xx - 4.0) / 3.4) ** 2 <= 1
    mixed = ((yy - 7.5) / 3.2) ** 2 + ((xx - 11.0) / 3.6) ** 2 <= 1
    cls[pale] = rng.choice(["ADI", "MUC", "STR", "ADI"], size=int(pale.sum()))
    cls[mixed] = rng.choice(list(TISSUE), size=int(mixed.sum()))
    for r, c in ((9, 1), (10, 4), (1, 10), (1, 14), (6, 7)):
        cls[r, c] = rng.choice(list(TISSUE))
    img = np.zeros((rows * 224, cols * 224, 3), np.uint8)
    for r in range(rows):
        for c in range(cols):
            t = np.rot90(patches[str(cls[r, c])], int(rng.integers(4)))
            img[r * 224:(r + 1) * 224, c * 224:(c + 1) * 224] = t[:, ::-1] if rng.integers(2) else t
    path = out / "mosaic.png"
    Image.fromarray(img).save(path)
    return path, cls
