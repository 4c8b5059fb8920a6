"""Pick the standard validation people out of the official release .mat.

The 2958-person validation set that HRNet and mmpose report on (Tompson et al.'s split, taken
from images with img_train == 1) is defined by their valid.json, not by the release file. A
release person belongs to it when valid.json has a person in the same image whose `center` is
within MATCH_PX of the person's `objpos` (both are MATLAB 1-based pixels; the json centres are
the release's objpos).
"""
from __future__ import annotations

import math
from collections import defaultdict

from .errors import ShardError
from .source import file_info, load_json, need, numbers_list

MATCH_PX = 2.0


class PeopleSelection:
    """The people of a json-convention file, looked up by (image name, centre)."""

    def __init__(self, path: str):
        data = load_json(path)
        if not isinstance(data, list):
            raise ShardError(f"{path}: --val-people takes the MPII json convention (a list of "
                             "{image, center, ...}), e.g. HRNet's / mmpose's valid.json")
        self.path = path
        self.info = file_info(path)
        self.centres: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for i, ann in enumerate(data):
            name = need(ann, "image", str, path, f"[{i}]")
            x, y = numbers_list(need(ann, "center", list, path, f"[{i}]"), 2, path, f"[{i}].center")
            self.centres[name].append((x, y))
        self.total = len(data)
        self.found: set[tuple[str, int]] = set()

    def contains(self, name: str, x: float, y: float) -> bool:
        """Whether (name, objpos x, y) is one of the file's people; remembers the match."""
        best, best_d = None, MATCH_PX
        for j, (cx, cy) in enumerate(self.centres.get(name, ())):
            d = math.hypot(cx - x, cy - y)
            if d <= best_d:
                best, best_d = j, d
        if best is None:
            return False
        self.found.add((name, best))
        return True

    def check_all_found(self, release: str) -> None:
        missing = self.total - len(self.found)
        if missing:
            raise ShardError(f"{self.path}: {missing} of its {self.total} people are not in {release} "
                             f"(matched by image name and centre within {MATCH_PX} px): not the split of "
                             "this release file")
