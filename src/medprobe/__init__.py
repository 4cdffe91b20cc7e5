"""medprobe: benchmark frozen vision foundation models as universal encoders for medical imaging.

One-way flow: data -> preprocess -> encoders -> features (cache) -> heads -> metrics -> results -> report.
"""

__version__ = "0.1.0"
FEATURE_FORMAT_VERSION = 1
