"""Plug-and-play: add attention to existing networks (:func:`attach`) and convert checkpoints."""

from .attach import AttachReport, Insertion, attach

__all__ = ["AttachReport", "Insertion", "attach"]
