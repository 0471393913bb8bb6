"""Training data: an image data set over a zip or folder with dataset.json, and a resumable sharded sampler."""

from __future__ import annotations

import json
import math
import os
import posixpath
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image

from training.dataset_classes import class_table_lookup  # re-exported: the generation tools use it from here

__all__ = ["ImageDataset", "InfiniteSampler", "GlobalBatchSampler", "class_table_lookup"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
HIDDEN_PREFIX = "meta/"  # ground truth of synthetic data sets: never listed, never readable here


def _is_hidden(fname: str) -> bool:
    """True for meta/ ground truth, and for paths that climb out of the data set."""
    norm = posixpath.normpath(fname.replace("\\", "/")).lstrip("/")
    return norm in ("meta", "..") or norm.startswith(HIDDEN_PREFIX) or norm.startswith("../")


class ImageDataset(torch.utils.data.Dataset):
    """Square RGB images (uint8 [3, R, R] tensors) and class labels from a zip or folder.

    The folder/zip holds PNGs and `dataset.json` = {"labels": [[path, class], ...], "classes": [...]}.
    With `xflip`, the length doubles and index i >= N returns image i - N mirrored left-right.
    `max_size` keeps a random subset (fixed by `random_seed`). Zip handles are opened lazily per
    process, so the data set can be pickled to DataLoader workers (fork or spawn).
    """

    def __init__(self, path: Union[str, Path], resolution: Optional[int] = None, use_labels: bool = True,
                 xflip: bool = False, max_size: Optional[int] = None, random_seed: int = 0):
        self.path = str(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"data set not found: {self.path}")
        self._is_zip = os.path.isfile(self.path)
        if self._is_zip and not zipfile.is_zipfile(self.path):
            raise ValueError(f"data set {self.path}: a file that is not a zip (expected a .zip or a folder)")
        self._zip: Optional[zipfile.ZipFile] = None
        self._zip_pid: Optional[int] = None
        self._use_labels = use_labels
        self._xflip = xflip
        self._fnames, self._raw_labels, self._classes = self._read_index()
        if use_labels and self._raw_labels is None:
            raise ValueError(f"data set {self.path}: no dataset.json with labels (pass use_labels=False)")
        self._raw_idx = np.arange(len(self._fnames), dtype=np.int64)
        if max_size is not None and max_size < len(self._raw_idx):
            rng = np.random.RandomState(random_seed % (1 << 31))
            self._raw_idx = np.sort(rng.permutation(self._raw_idx)[:max_size])
        first = self._load_raw_image(int(self._raw_idx[0]), expect=None)
        self._resolution = int(resolution) if resolution is not None else first.shape[0]
        self._check_image(first, self._fnames[int(self._raw_idx[0])])

    # ---------------------------------------------------------------- index and files
    def _read_index(self) -> Tuple[List[str], Optional[np.ndarray], List[Dict[str, Any]]]:
        names = self._all_names()
        if "dataset.json" in names:
            with self._open_file("dataset.json") as f:
                meta = json.load(f)
            labels = meta.get("labels")
            classes = list(meta.get("classes") or [])
        else:
            labels, classes = None, []
        if labels is None:
            fnames = sorted(n for n in names if n.lower().endswith(IMAGE_EXTENSIONS) and not _is_hidden(n))
            raw = None
        else:
            fnames = [str(p) for p, _ in labels]
            raw = np.array([int(c) for _, c in labels], dtype=np.int64)
            self._check_labels(fnames, raw, names, classes)
        if not fnames:
            raise ValueError(f"data set {self.path}: contains no images")
        return fnames, raw, classes

    def _check_labels(self, fnames: List[str], raw: np.ndarray, names: set, classes: List[Dict[str, Any]]) -> None:
        hidden = [n for n in fnames if _is_hidden(n)]
        if hidden:
            raise ValueError(f"{self.path}/dataset.json lists files under meta/ (hidden ground truth): {hidden[:3]}")
        missing = [n for n in fnames if n not in names]
        if missing:
            raise ValueError(f"{self.path}/dataset.json lists {len(missing)} missing file(s), e.g. {missing[0]}")
        if classes and (raw.min() < 0 or raw.max() >= len(classes)):
            bad = fnames[int(np.argmax((raw < 0) | (raw >= len(classes))))]
            raise ValueError(f"{self.path}/dataset.json: label of {bad} outside 0..{len(classes) - 1}")

    def _all_names(self) -> set:
        if self._is_zip:
            return {n for n in self._get_zip().namelist() if not n.endswith("/") and not _is_hidden(n)}
        out = set()
        for dirpath, dirnames, filenames in os.walk(self.path):
            rel = os.path.relpath(dirpath, self.path).replace(os.sep, "/")
            for fn in filenames:
                name = fn if rel == "." else f"{rel}/{fn}"
                if not _is_hidden(name):
                    out.add(name)
        return out

    def _get_zip(self) -> zipfile.ZipFile:
        # A handle inherited through fork shares its file offset with the parent; reopen per process.
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)
            self._zip_pid = os.getpid()
        return self._zip

    def _open_file(self, fname: str):
        if _is_hidden(fname):
            raise PermissionError(f"{fname}: files under meta/ are hidden ground truth and not readable here")
        if self._is_zip:
            return self._get_zip().open(fname, "r")
        return open(os.path.join(self.path, fname), "rb")

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_zip"], state["_zip_pid"] = None, None  # reopened lazily in the new process
        return state

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        self._zip, self._zip_pid = None, None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # ---------------------------------------------------------------- images
    def _load_raw_image(self, raw_idx: int, expect: Optional[int] = -1) -> np.ndarray:
        fname = self._fnames[raw_idx]
        try:
            with self._open_file(fname) as f:
                img = Image.open(f)
                img.load()
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.path}: cannot read image {fname}: {e}") from None
        arr = np.asarray(img)
        if expect is not None:
            self._check_image(arr, fname)
        return arr

    def _check_image(self, arr: np.ndarray, fname: str) -> None:
        if arr.ndim != 3 or arr.shape[2] != 3:
            shape = "x".join(map(str, arr.shape))
            raise ValueError(f"{self.path}: image {fname} is not 3-channel RGB (shape {shape}); rebuild with dataset_tool.py")
        if arr.shape[0] != arr.shape[1]:
            raise ValueError(f"{self.path}: image {fname} is not square ({arr.shape[1]}x{arr.shape[0]})")
        if arr.shape[0] != self._resolution:
            raise ValueError(f"{self.path}: image {fname} is {arr.shape[0]}x{arr.shape[1]}, "
                             f"but the data set's resolution is {self._resolution}")
        if arr.dtype != np.uint8:
            raise ValueError(f"{self.path}: image {fname} is {arr.dtype}, expected 8-bit")

    def __len__(self) -> int:
        return len(self._raw_idx) * (2 if self._xflip else 1)

    def _split_index(self, idx: int) -> Tuple[int, bool]:
        n = len(self._raw_idx)
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for a data set of length {len(self)}")
        return int(self._raw_idx[idx % n]), idx >= n

    def __getitem__(self, idx: int) -> Tuple[torch.Tensor, int]:
        """(uint8 image [3, R, R], class index; -1 when use_labels is False)."""
        raw, flip = self._split_index(int(idx))
        img = self._load_raw_image(raw).transpose(2, 0, 1)  # HWC -> CHW
        if flip:
            img = img[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(img)), self._label_of(raw)

    def _label_of(self, raw: int) -> int:
        return int(self._raw_labels[raw]) if self._use_labels and self._raw_labels is not None else -1

    # ---------------------------------------------------------------- labels and metadata
    def get_label(self, idx: int) -> int:
        """Class index of item `idx` without decoding the image."""
        return self._label_of(self._split_index(int(idx))[0])

    def get_fname(self, idx: int) -> str:
        """Relative path of item `idx` inside the data set."""
        return self._fnames[self._split_index(int(idx))[0]]

    @property
    def labels(self) -> np.ndarray:
        """Class index of every item, in item order (length len(self))."""
        raw = self._raw_idx if not self._xflip else np.concatenate([self._raw_idx, self._raw_idx])
        if not self._use_labels or self._raw_labels is None:
            return np.full(len(raw), -1, dtype=np.int64)
        return self._raw_labels[raw]

    @property
    def label_dim(self) -> int:
        """Number of classes (0 when labels are not used)."""
        if not self._use_labels or self._raw_labels is None:
            return 0
        return len(self._classes) if self._classes else int(self._raw_labels.max()) + 1

    def one_hot(self, labels: Union[torch.Tensor, np.ndarray, List[int]]) -> torch.Tensor:
        """Class indices [B] -> float one-hot [B, label_dim] (an empty [B, 0] without labels)."""
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
        if self.label_dim == 0:
            return torch.zeros(labels.shape[0], 0)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.label_dim):
            raise ValueError(f"labels must be in 0..{self.label_dim - 1}, got {labels.min()}..{labels.max()}")
        return torch.nn.functional.one_hot(labels, self.label_dim).float()

    @property
    def classes(self) -> List[Dict[str, Any]]:
        """The class table from dataset.json (index, name, synset, imagenet_index); store it in checkpoints."""
        return [dict(c) for c in self._classes]

    def lookup_class(self, query: Union[int, str]) -> int:
        """Data-set class index for an ImageNet-1k index, a class name or a synset."""
        return class_table_lookup(self._classes, query)

    @property
    def resolution(self) -> int:
        return self._resolution

    @property
    def num_channels(self) -> int:
        return 3

    @property
    def image_shape(self) -> List[int]:
        return [3, self._resolution, self._resolution]

    @property
    def has_labels(self) -> bool:
        return self.label_dim > 0

    @property
    def name(self) -> str:
        return Path(self.path).name.removesuffix(".zip")


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless indices for one rank: each epoch a permutation fixed by (seed, epoch), dealt round-robin
    to the ranks (padded by wrapping so every rank gets ceil(N / num_replicas) per epoch).

    The stream is a pure function of (seed, rank, num_replicas, N) and the position, so resuming
    needs only the position: `state_dict(consumed=k)` saves it (pass the number of indices the
    training loop really used; DataLoader prefetching runs the iterator ahead), `load_state_dict`
    restores it and the next iterator continues exactly there.
    """

    def __init__(self, dataset: Union[torch.utils.data.Dataset, int], rank: int = 0, num_replicas: int = 1,
                 shuffle: bool = True, seed: int = 0):
        self.num_items = dataset if isinstance(dataset, int) else len(dataset)
        if self.num_items <= 0:
            raise ValueError("InfiniteSampler: the data set is empty")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"InfiniteSampler: rank={rank} must be in 0..num_replicas-1 (num_replicas={num_replicas})")
        self.rank, self.num_replicas, self.shuffle, self.seed = rank, num_replicas, shuffle, seed
        self.per_rank = math.ceil(self.num_items / num_replicas)
        self.position = 0  # indices handed out by this rank since the start of training

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's indices for `epoch`, in order."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
        else:
            order = np.arange(self.num_items)
        order = np.resize(order, self.per_rank * self.num_replicas)  # wrap-around padding
        return order[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        pos = self.position
        while True:
            epoch, offset = divmod(pos, self.per_rank)
            for i in self.epoch_indices(epoch)[offset:]:
                pos += 1
                self.position = pos
                yield int(i)

    def state_dict(self, consumed: Optional[int] = None) -> Dict[str, int]:
        """Resume state; `consumed` overrides the position (indices really used by this rank)."""
        return {"position": int(self.position if consumed is None else consumed), "seed": int(self.seed),
                "num_items": int(self.num_items), "num_replicas": int(self.num_replicas),
                "shuffle": int(self.shuffle)}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Continue from a saved position (the sampler's settings must match the saved ones)."""
        for key in ("seed", "num_items", "num_replicas", "shuffle"):
            mine = int(getattr(self, key))
            if key in state and int(state[key]) != mine:
                raise ValueError(f"InfiniteSampler.load_state_dict: saved {key}={state[key]} but this sampler has {mine}")
        self.position = int(state["position"])


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Rank `rank`'s share of every global batch drawn from one shared index stream.

    All ranks walk the same `InfiniteSampler(num_replicas=1)` stream; from each block of
    `global_batch` consecutive indices, rank r takes items [r*B/W, (r+1)*B/W). So a run on W
    processes sees exactly the images a single process would see with the same total batch,
    in the same order of rounds, which is what makes results independent of the GPU count.
    The resume state is the stream position: `global_batch` times the number of steps taken.
    """

    def __init__(self, dataset: Union[torch.utils.data.Dataset, int], global_batch: int, rank: int = 0,
                 num_replicas: int = 1, shuffle: bool = True, seed: int = 0):
        if global_batch % num_replicas != 0:
            raise ValueError(f"GlobalBatchSampler: global_batch={global_batch} is not divisible by "
                             f"num_replicas={num_replicas}")
        self.stream = InfiniteSampler(dataset, rank=0, num_replicas=1, shuffle=shuffle, seed=seed)
        self.global_batch, self.rank, self.num_replicas = global_batch, rank, num_replicas
        self.per_rank = global_batch // num_replicas

    def __iter__(self) -> Iterator[int]:
        stream = iter(self.stream)
        lo, hi = self.rank * self.per_rank, (self.rank + 1) * self.per_rank
        while True:
            block = [next(stream) for _ in range(self.global_batch)]
            yield from block[lo:hi]

    def set_position(self, steps: int) -> None:
        """Continue after `steps` global batches (the position must be set before iterating)."""
        self.stream.position = int(steps) * self.global_batch
