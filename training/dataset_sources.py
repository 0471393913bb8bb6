"""Listing source files for dataset_tool.py: ImageNet-style trees and folder-per-class trees."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from training.dataset_classes import ImageNetClass, imagenet_class_entries
from training.dataset_writer import SourceItem


class SourceError(ValueError):
    """The source tree does not match what was asked for (message names the folder/file)."""


def list_files(folder: Path, recursive: bool) -> List[str]:
    """All regular files under `folder`, sorted by relative path; hidden files and folders skipped.

    Non-image files are kept on purpose: processing reports them instead of dropping them silently.
    """
    out: List[Tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        rel_dir = os.path.relpath(dirpath, folder)
        for name in filenames:
            if not name.startswith("."):
                out.append((os.path.normpath(os.path.join(rel_dir, name)), os.path.join(dirpath, name)))
    out.sort()
    return [full for _, full in out]


def select(per_class: List[List[str]], max_per_class: Optional[int], max_images: Optional[int]) -> List[SourceItem]:
    """Cap files per class, then (round-robin over classes, so every class keeps some) in total.

    The result is class-major and sorted within a class, so it is deterministic.
    """
    if max_per_class is not None:
        per_class = [files[:max_per_class] for files in per_class]
    keep = [len(files) for files in per_class]
    if max_images is not None and sum(keep) > max_images:
        keep = [0] * len(per_class)
        total, depth = 0, 0
        while total < max_images:
            for c, files in enumerate(per_class):
                if depth < len(files) and total < max_images:
                    keep[c] += 1
                    total += 1
            depth += 1
    return [SourceItem(path, c) for c, files in enumerate(per_class) for path in files[:keep[c]]]


def imagenet_source(source: Union[str, Path], classes: Sequence[ImageNetClass], max_per_class: Optional[int] = None,
                    max_images: Optional[int] = None) -> Tuple[List[SourceItem], List[Dict[str, Any]]]:
    """Items and the dataset.json class table for an ImageNet-style tree (one folder per synset)."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise SourceError(f"--source {source}: not a folder")
    missing = [c for c in classes if not (source / c.synset).is_dir()]
    if missing:
        lines = "\n  ".join(f"{c.where or c.index}: {c.synset} ({c.name}) -> {source / c.synset}" for c in missing)
        raise SourceError(f"{len(missing)} listed class folder(s) missing under {source}:\n  {lines}")
    per_class = [list_files(source / c.synset, recursive=False) for c in classes]
    return select(per_class, max_per_class, max_images), imagenet_class_entries(classes)


def folder_source(source: Union[str, Path], max_per_class: Optional[int] = None,
                  max_images: Optional[int] = None) -> Tuple[List[SourceItem], List[Dict[str, Any]]]:
    """Items and class table for a folder per class (class names = sorted folder names)."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise SourceError(f"--source {source}: not a folder")
    names = sorted(d.name for d in source.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise SourceError(f"--source {source}: no class sub-folders (expected one folder per class)")
    per_class = [list_files(source / n, recursive=True) for n in names]
    classes = [{"index": i, "name": n, "synset": None, "imagenet_index": None} for i, n in enumerate(names)]
    return select(per_class, max_per_class, max_images), classes
