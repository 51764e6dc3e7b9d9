"""avray: self-supervised audio-visual representation learning on Ray."""

import os

# Ray folds worker lines that differ only in numbers into one ("[repeated 2x across cluster]"):
# avray's epoch lines and progress ticks (avray.console) must reach the driver each on its own.
# Ray reads this when it is imported.
os.environ.setdefault("RAY_DEDUP_LOGS_ALLOW_REGEX", r"\[avray")

__version__ = "0.1.0"
