"""Confusion matrix and per-class IoU: the pipeline's one IoU convention."""
import numpy as np


def confusion_matrix(label, pred, num_classes):
    """num_classes x num_classes counts, rows = label, columns = prediction."""
    label = np.asarray(label, dtype=np.int64).ravel()
    pred = np.asarray(pred, dtype=np.int64).ravel()
    keep = (label >= 0) & (label < num_classes)
    idx = label[keep] * num_classes + np.clip(pred[keep], 0, num_classes - 1)
    return np.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_per_class(cm, xp=np):
    """IoU of each class from a confusion matrix: the one IoU convention of the pipeline.

    A class absent from both label and prediction scores 1 (nothing to find, nothing
    wrongly found); absent from the label but predicted scores 0. xp is numpy, or
    keras.ops for a float confusion-matrix tensor (the training log's metrics).
    """
    if xp is np:
        cm = np.asarray(cm, dtype=np.float64)
    tp = xp.diagonal(cm)
    union = xp.sum(cm, axis=0) + xp.sum(cm, axis=1) - tp
    return xp.where(union > 0, tp / xp.maximum(union, 1), 1.0)
