"""`mlflow models serve -m models:/NAME@champion --env-manager local` on loopback: real JPEGs posted
as base64 JSON (with and without boxes) get exactly the pyfunc's answer; the server's process
group is stopped at the end."""
from __future__ import annotations

import base64
import json
import os
import urllib.error

import mlflow
import numpy as np
import pandas as pd
import pytest

from tests.e2e.registered_model import registered_model  # noqa: F401 (fixture)
from tests.testlib import demo_shards, free_port  # noqa: F401 (fixture)
from trainer.inference.serving import ModelServer, request_body

pytestmark = pytest.mark.slow


def test_served_champion_answers_like_the_pyfunc(registered_model, tmp_path):  # noqa: F811
    images = [p.read_bytes() for p in registered_model.val_images[:3]]
    boxes = [None, [[20.0, 10.0, 120.0, 200.0], [5.0, 5.0, 60.0, 90.0]], None]
    mlflow.set_tracking_uri(registered_model.server.uri)
    expected = mlflow.pyfunc.load_model(registered_model.uri).predict(
        pd.DataFrame({"image": images, "boxes": boxes}))
    assert list(expected["image_index"]) == [0, 1, 1, 2]

    server = ModelServer(registered_model.uri, free_port(), str(tmp_path / "serve.log"),
                         env={"MLFLOW_TRACKING_URI": registered_model.server.uri, "OMP_NUM_THREADS": "1"})
    with server:
        group = server.process.pid
        answer = server.invoke(request_body(images, boxes))
        # JSON written by hand: integer boxes, a record without boxes, one with null
        records = [{"image": base64.b64encode(images[0]).decode()},
                   {"image": base64.b64encode(images[1]).decode(), "boxes": [[20, 10, 120, 200], [5, 5, 60, 90]]},
                   {"image": base64.b64encode(images[2]).decode(), "boxes": None}]
        by_hand = server.invoke(json.dumps({"dataframe_records": records}).encode())
        with pytest.raises(urllib.error.HTTPError, match="400"):
            server.invoke(b'{"dataframe_records": [{"image": "not base64!"}]}')
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)  # the whole group is gone

    assert by_hand == answer
    assert [row["image_index"] for row in answer] == list(expected["image_index"])
    assert [row["person_index"] for row in answer] == list(expected["person_index"])
    for row, (_, want) in zip(answer, expected.iterrows()):
        assert row["box"] == list(want["box"])
        assert row["score"] == want["score"]
        assert np.array_equal(np.array(row["keypoints"]), np.array(want["keypoints"]))
