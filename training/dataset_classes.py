"""Class tables: the ImageNet-1k table, class-list files, and resolving a class query."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

# The table ships with the repository (configs/ beside the packages).
DEFAULT_IMAGENET_TABLE = Path(__file__).resolve().parents[1] / "configs" / "imagenet1k_classes.tsv"
_SYNSET_RE = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class ImageNetClass:
    """One row of the ImageNet-1k table."""

    index: int
    synset: str
    names: str  # comma-separated WordNet lemmas, first one is the display name
    where: str = field(default="", compare=False)  # "file:line" when read from a class list

    @property
    def name(self) -> str:
        return self.names.split(",")[0].strip()


class ClassListError(ValueError):
    """A class-list file names a class that does not exist (the message names file and line)."""


def load_imagenet_table(path: Union[str, Path, None] = None) -> List[ImageNetClass]:
    """Read the `index, synset, names` TSV into a list ordered by index."""
    path = Path(path) if path is not None else DEFAULT_IMAGENET_TABLE
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet class table not found: {path}")
    rows: List[ImageNetClass] = []
    with open(path, newline="", encoding="utf-8") as f:
        for rec in csv.reader(f, delimiter="\t"):
            if not rec or rec[0].strip().lower() == "index":
                continue
            rows.append(ImageNetClass(int(rec[0]), rec[1].strip(), rec[2].strip()))
    rows.sort(key=lambda r: r.index)
    if [r.index for r in rows] != list(range(len(rows))):
        raise ValueError(f"{path}: indices are not 0..{len(rows) - 1} without gaps")
    return rows


def _resolve_token(token: str, table: Sequence[ImageNetClass], by_synset: Dict[str, ImageNetClass],
                   where: str) -> ImageNetClass:
    """Turn one token of a class-list line (index digits or synset) into a table row."""
    if token.isdigit():
        idx = int(token)
        if not 0 <= idx < len(table):
            raise ClassListError(f"{where}: ImageNet-1k index {idx} is out of range 0..{len(table) - 1}")
        return table[idx]
    if _SYNSET_RE.match(token):
        if token not in by_synset:
            raise ClassListError(f"{where}: unknown synset '{token}' (not in the ImageNet-1k table)")
        return by_synset[token]
    raise ClassListError(f"{where}: '{token}' is neither an ImageNet-1k index nor a WordNet synset like n01440764")


def parse_class_list(path: Union[str, Path], table: Optional[Sequence[ImageNetClass]] = None) -> List[ImageNetClass]:
    """Read a class-list file: one class per line (`index`, `synset` or `index synset name`), # comments.

    Every problem (unknown synset/index, index and synset that disagree, duplicates)
    raises ClassListError naming the file and line, so callers can fail before any work.
    """
    path = Path(path)
    if not path.is_file():
        raise ClassListError(f"class list not found: {path}")
    table = list(table) if table is not None else load_imagenet_table()
    by_synset = {r.synset: r for r in table}
    out: List[ImageNetClass] = []
    seen: Dict[int, int] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path}:{lineno}"
        tokens = line.split(None, 2)
        first = _resolve_token(tokens[0], table, by_synset, where)
        if len(tokens) >= 2 and (tokens[1].isdigit() or _SYNSET_RE.match(tokens[1])):
            second = _resolve_token(tokens[1], table, by_synset, where)
            if second.index != first.index:
                raise ClassListError(f"{where}: '{tokens[0]}' and '{tokens[1]}' name different classes "
                                     f"({first.index} {first.synset} vs {second.index} {second.synset})")
        if first.index in seen:
            raise ClassListError(f"{where}: class {first.index} ({first.synset}) already listed on line {seen[first.index]}")
        seen[first.index] = lineno
        out.append(replace(first, where=where))
    if not out:
        raise ClassListError(f"{path}: lists no classes")
    return out


def imagenet_class_entries(classes: Sequence[ImageNetClass]) -> List[Dict[str, Any]]:
    """The dataset.json class table for ImageNet classes, in data-set index order."""
    return [{"index": i, "name": c.names, "synset": c.synset, "imagenet_index": c.index}
            for i, c in enumerate(classes)]


def _describe(entry: Dict[str, Any]) -> str:
    key = entry.get("imagenet_index")
    key = entry["index"] if key is None else key
    name = str(entry.get("name", "")).split(",")[0].strip()
    syn = entry.get("synset")
    return f"{key}: {name}" + (f" ({syn})" if syn else "")


def class_table_lookup(classes: Sequence[Dict[str, Any]], query: Union[int, str]) -> int:
    """Data-set class index for `query`: an ImageNet-1k index (int or digits), a class name
    (any comma-separated lemma, case-insensitive) or a synset.

    Numbers are ImageNet-1k indices when the table has them (ImageNet data sets); for a
    table without ImageNet ids (folder data sets) a number is the data-set index itself.
    Raises ValueError listing the valid classes as `index: name (synset)`.
    """
    q = str(query).strip()
    has_imagenet = any(c.get("imagenet_index") is not None for c in classes)
    for c in classes:
        if q.isdigit():
            key = c.get("imagenet_index") if has_imagenet else c.get("index")
            if key is not None and int(q) == int(key):
                return int(c["index"])
        elif c.get("synset") and q.lower() == str(c["synset"]).lower():
            return int(c["index"])
        elif q.lower() in (n.strip().lower() for n in str(c.get("name", "")).split(",")):
            return int(c["index"])
    valid = "\n  ".join(_describe(c) for c in classes)
    kind = "ImageNet-1k index" if has_imagenet else "class index"
    raise ValueError(f"unknown class '{query}' (give a {kind}, a class name or a synset); valid classes:\n  {valid}")
