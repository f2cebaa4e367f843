"""The offline demo model: synthetic shape images (``shapes``) and a small ResNet trained on them (``train``)."""

from inferpipe.demo_model.shapes import CLASSES, render, sample_images

__all__ = ["CLASSES", "render", "sample_images"]
