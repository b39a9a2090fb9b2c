"""kshot: one-shot and few-shot learning, every method on one data path and one harness."""

__version__ = "0.1.0"

from kshot.errors import KShotError

__all__ = ["KShotError", "__version__"]
