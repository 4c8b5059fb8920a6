import pytest

from shards.errors import ShardError
from shards.schema import COCO17, MPII16, KeypointSchema, load_schema


@pytest.mark.parametrize("schema", [COCO17, MPII16])
def test_flip_permutation_is_an_involution_swapping_left_and_right(schema):
    perm = schema.flip_permutation()
    assert sorted(perm) == list(range(schema.num_keypoints))
    assert [perm[p] for p in perm] == list(range(schema.num_keypoints))
    for i, j in enumerate(perm):
        a, b = schema.keypoint_names[i], schema.keypoint_names[j]
        if i != j:
            assert {a.split("_")[0], b.split("_")[0]} == {"left", "right"}
            assert a.split("_", 1)[1] == b.split("_", 1)[1]


def test_builtins_by_name_and_round_trip_through_dict():
    assert load_schema("coco") is COCO17 and load_schema("MPII16") is MPII16
    assert COCO17.num_keypoints == 17 and len(COCO17.sigmas) == 17
    assert MPII16.pckh_excluded == (6, 7)
    assert KeypointSchema.from_dict(COCO17.to_dict()) == COCO17


def test_custom_yaml_schema(tmp_path):
    path = tmp_path / "hand.yaml"
    path.write_text("name: hands\nnames: [left_wrist, right_wrist, nose]\n"
                    "flip_pairs: [[0, 1]]\nskeleton: [[0, 2], [1, 2]]\nsigmas: [0.1, 0.1, 0.05]\n")
    schema = load_schema(str(path))
    assert schema.name == "hands" and schema.num_keypoints == 3
    assert schema.flip_permutation() == [1, 0, 2]


@pytest.mark.parametrize("body, field", [
    ("names: [a, b]\nflip_pairs: [[0, 2]]\n", "flip_pairs[0]"),
    ("names: [a, b, c]\nflip_pairs: [[0, 1], [1, 2]]\n", "flip_pairs[1]"),
    ("names: [a, b]\nsigmas: [0.1]\n", "sigmas"),
    ("names: []\n", "names"),
    ("names: [a, b]\nskeleton: [[0, x]]\n", "skeleton[0]"),
])
def test_bad_yaml_schema_names_file_and_field(tmp_path, body, field):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ShardError) as err:
        load_schema(str(path))
    assert str(path) in str(err.value) and field in str(err.value)


def test_unknown_schema_name():
    with pytest.raises(ShardError, match="unknown keypoint schema"):
        load_schema("no-such-schema")
