"""adaloop's torch backend: the twin of the numpy reference, proven equal to it by `pytest -k equivalence`."""
from .model import LoopedTransformer, from_reference, load, save

__all__ = ["LoopedTransformer", "from_reference", "load", "save"]
