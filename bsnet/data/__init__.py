"""Data sets by name (`list_datasets()`), all returning `DataSplits`; `register_dataset` adds one.

    digits        scikit-learn's 8x8 digits (embedded)                     classification, 10 classes
    cifar10       CIFAR-10: python release or image folder (data_dir)      classification, 10 classes
    cifar100      CIFAR-100: python release or image folder (data_dir)     classification, 100 classes
    image-folder  any train/<class>/, test/<class>/ image folder           classification
    partlabels    LFW Part Labels faces, 128x128 (data_dir)                segmentation, 3 classes
    shapes        procedural shapes on textured backgrounds (embedded)    segmentation, 4 classes
"""
from bsnet.data.base import Augment, DataSplits, Split, batches, num_batches
from bsnet.data.registry import list_datasets, load_dataset, register_dataset

__all__ = ["Augment", "DataSplits", "Split", "batches", "list_datasets", "load_dataset", "num_batches",
           "register_dataset"]
