"""Synthetic training patches for the tests and benchmarks that train: bright discs (class 1)
and dark squares (class 2) on a noisy, unevenly lit background, laid out as gen_img_aug.py and
pre_processing.py leave a work folder, and held-out patches to score a model on."""
import json

import cv2
import numpy as np

SIZE = 64


def synthetic_patch(rng):
    img = rng.normal(120, 12, (SIZE, SIZE)) + np.linspace(-15, 15, SIZE)[None, :]
    lbl = np.zeros((SIZE, SIZE), np.uint8)
    for _ in range(rng.integers(1, 4)):
        x, y, r = rng.integers(8, SIZE - 8), rng.integers(8, SIZE - 8), rng.integers(4, 8)
        cv2.circle(lbl, (int(x), int(y)), int(r), 1, -1)
    for _ in range(rng.integers(1, 3)):
        x, y, s = rng.integers(0, SIZE - 12), rng.integers(0, SIZE - 12), rng.integers(6, 12)
        lbl[y:y + s, x:x + s] = 2
    img[lbl == 1] += 70
    img[lbl == 2] -= 70
    return np.clip(img, 0, 255).astype(np.uint8), lbl


def make_patch_set(work, count, seed=0, color=False, unsure=False):
    """A work folder as gen_img_aug.py + pre_processing.py leave it (prep = raw here); with
    color, as pre_processing.py --color-mode rgb leaves it, each channel a different tone; with
    unsure, a random 16 px square of each label marked to ignore (255)."""
    rng = np.random.default_rng(seed)
    for sub in ("prep", "label"):
        (work / "train" / sub).mkdir(parents=True)
    for i in range(count):
        img, lbl = synthetic_patch(rng)
        if unsure:
            y, x = rng.integers(0, SIZE - 16, 2)
            lbl[y:y + 16, x:x + 16] = 255
        if color:
            img = np.dstack([img, 255 - img, img // 2])
        cv2.imwrite(str(work / "train" / "prep" / f"{i:06d}.png"), img)
        cv2.imwrite(str(work / "train" / "label" / f"{i:06d}.png"), lbl)
    channels = 3 if color else 1
    (work / "train_mean_std.json").write_text(json.dumps(
        {"mean": [120.0] * channels, "std": [30.0] * channels,
         "color_mode": "rgb" if color else "grey", "channels": channels, "gamma": 1.2}))


def held_out(count=24, seed=99):
    """(images as the network takes them, labels) of `count` patches no training set holds."""
    rng = np.random.default_rng(seed)
    pairs = [synthetic_patch(rng) for _ in range(count)]
    x = np.stack([np.repeat(p[0][:, :, None], 3, axis=2) for p in pairs]).astype(np.float32) / 255
    return x, np.stack([p[1] for p in pairs])


def mean_iou(model, x, y, training):
    """The model's mean IoU on (x, y), BatchNorm in training or inference mode."""
    from metrics import confusion_matrix, iou_per_class
    pred = np.argmax(np.asarray(model(x, training=training)), axis=-1)
    return iou_per_class(confusion_matrix(y, pred, 3)).mean()
