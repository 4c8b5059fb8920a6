"""One person to be cut out of one image: what the readers produce and the writer consumes."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class InstanceRecord:
    dataset: str  # "coco" | "mpii"
    image_id: int
    annotation_id: int
    image_path: str
    file_name: str
    bbox: list[float]  # [x, y, w, h] in image pixels
    keypoints: list[list[float]]  # [[x, y, v], ...] in image pixels, v as in COCO
    area: float
    extra: dict[str, Any] = field(default_factory=dict)  # head_size (MPII), score (detections)

    @property
    def key(self) -> str:
        # webdataset splits keys at the first dot: ids are integers, so none can appear
        return f"{self.dataset}-{self.image_id}-{self.annotation_id}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def labelled_count(keypoints: list[list[float]]) -> int:
    return sum(1 for k in keypoints if k[2] > 0)
