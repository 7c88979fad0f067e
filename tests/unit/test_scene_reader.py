"""The demo shape reader (demo/scene_reader.py), its scenes file and its t2i metrics hook."""
import json

import numpy as np
import pytest

from demo.data import COLOURS, POSITIONS, SHAPES, SceneObject, place_objects, render_scene
from demo.scene_reader import (best_candidate_accuracy, classify_shape, components, judge, read_objects,
                                scene_accuracy)

BACKGROUND = [236, 235, 238]


def render(objects, size=64, seed=0):
    """uint8 (size, size, 3) of demo SceneObjects drawn by the demo's own renderer."""
    placed = place_objects(objects, size, np.random.default_rng(seed))
    return np.asarray(render_scene(objects, placed, BACKGROUND, size))


def scene(*objects):
    return [{"colour": c, "shape": s, "position": p} for c, s, p in objects]


@pytest.mark.parametrize("position", POSITIONS)
def test_reads_colour_shape_and_side_of_every_rendered_big_shape(position):
    for colour in COLOURS:
        for shape in SHAPES:
            objects = read_objects(render((SceneObject(colour, shape, "big", position),)))
            assert [(o["colour"], o["shape"], o["side"]) for o in objects] == [(colour, shape, position)]


def test_reads_both_objects_of_a_small_pair_largest_first():
    image = render((SceneObject("purple", "triangle", "small", "left"), SceneObject("orange", "circle", "big",
                                                                                      "right")))
    objects = read_objects(image)
    assert [(o["colour"], o["shape"], o["side"]) for o in objects] == [("orange", "circle", "right"),
                                                                       ("purple", "triangle", "left")]
    assert objects[0]["area"] > objects[1]["area"] and 0.0 < objects[1]["x"] < 3 / 8 < 5 / 8 < objects[0]["x"] < 1.0


def test_background_and_specks_below_the_minimum_area_hold_no_object():
    image = np.full((64, 64, 3), 230, np.uint8)
    assert read_objects(image) == []
    image[10:14, 10:14] = (215, 38, 38)   # 16 pixels < 0.005 * 64 * 64 = 20.48
    assert read_objects(image) == []
    image[10:15, 10:15] = (215, 38, 38)   # 25 pixels: an object
    assert [o["colour"] for o in read_objects(image)] == ["red"]


def test_components_are_four_connected():
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[1, 1] = True        # diagonal neighbours: two components
    mask[3, 1:4] = True                   # a row: one
    found = sorted(len(ys) for ys, _ in components(mask))
    assert found == [1, 1, 3]


def test_shape_of_ideal_masks():
    yy, xx = np.mgrid[0:20, 0:20]
    square = np.nonzero(np.ones((20, 20), bool))
    circle = np.nonzero((yy - 9.5) ** 2 + (xx - 9.5) ** 2 <= 100)
    triangle = np.nonzero(yy >= 2 * np.abs(xx - 9.5))
    assert [classify_shape(*m) for m in (square, circle, triangle)] == ["square", "circle", "triangle"]


def test_judge_names_what_is_wrong():
    read = [{"colour": "red", "shape": "circle", "side": "left", "area": 300},
            {"colour": "blue", "shape": "square", "side": "right", "area": 200},
            {"colour": "green", "shape": "square", "side": "right", "area": 50}]
    verdict = judge(read, scene(("red", "circle", "left"), ("blue", "triangle", "right")))
    assert verdict["found"] == [True, True] and verdict["colour"] == [True, True]
    assert verdict["shape"] == [True, False] and verdict["exact"] is False
    verdict = judge(read[:2], scene(("red", "circle", "left"), ("blue", "square", "right")))
    assert verdict["exact"] is True
    assert judge(read, scene(("red", "circle", "left"), ("blue", "square", "right")))["exact"] is False  # one extra
    verdict = judge(read[:1], scene(("red", "circle", "middle")))   # drawn on the wrong side
    assert verdict == {"found": [False], "colour": [False], "shape": [False], "exact": False}


def test_scene_accuracy_against_a_hand_count():
    pair = (SceneObject("yellow", "square", "big", "left"), SceneObject("blue", "circle", "big", "right"))
    single = (SceneObject("green", "triangle", "big", "middle"),)
    images = np.stack([render(pair), render(single), np.full((64, 64, 3), 235, np.uint8)])
    scenes = [scene(("yellow", "square", "left"), ("blue", "triangle", "right")),   # one shape wrong
              scene(("red", "triangle", "middle")),                                   # colour wrong
              scene(("green", "circle", "left"))]                                     # blank: nothing found
    result = scene_accuracy(images, scenes)
    assert result["objects"] == 4
    assert result["found"] == pytest.approx(75.0)               # 3 of 4
    assert result["colour"] == pytest.approx(50.0)              # yellow, blue
    assert result["shape"] == pytest.approx(50.0)               # square, triangle
    assert result["colour_and_shape"] == pytest.approx(25.0)    # the yellow square only
    assert result["exact"] == 0.0
    assert scene_accuracy(images[:1], [scene(("yellow", "square", "left"), ("blue", "circle", "right"))])[
        "exact"] == 100.0
    with pytest.raises(ValueError, match="2 images for 1 scenes"):
        scene_accuracy(images[:2], scenes[:1])


def test_best_candidate_takes_each_scenes_candidate_with_most_right_shapes():
    want_pair = scene(("yellow", "square", "left"), ("blue", "circle", "right"))
    one_right = render((SceneObject("yellow", "square", "big", "left"), SceneObject("blue", "triangle", "big",
                                                                                    "right")))
    both_right_wrong_colour = render((SceneObject("red", "square", "big", "left"), SceneObject("blue", "circle",
                                                                                             "big", "right")))
    blank = np.full((64, 64, 3), 235, np.uint8)
    want_single = scene(("green", "triangle", "middle"))
    exact_single = render((SceneObject("green", "triangle", "big", "middle"),))
    result = best_candidate_accuracy([np.stack([one_right, both_right_wrong_colour, blank]),
                                      np.stack([blank, exact_single, blank])], [want_pair, want_single])
    assert result["shape"] == pytest.approx(100.0)   # 2 of 2 (the second candidate), 1 of 1
    assert result["exact"] == pytest.approx(50.0)    # only the single has an exact candidate
    result = best_candidate_accuracy([np.stack([one_right, blank])], [want_pair])
    assert result == {"shape": pytest.approx(50.0), "exact": 0.0}
    with pytest.raises(ValueError, match="1 candidate sets for 2 scenes"):
        best_candidate_accuracy([np.stack([blank])], [want_pair, want_single])


def test_scenes_file_errors_name_the_line(tmp_path):
    from demo.scene_reader import read_scenes
    from src.errors import UserError
    path = tmp_path / "scenes.jsonl"
    good = {"id": "a", "objects": [{"colour": "red", "shape": "circle", "position": "left", "size": "big"}]}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({"id": "b", "objects": [{"colour": "red"}]}) + "\n")
    with pytest.raises(UserError, match=r"scenes.jsonl, line 3: not a scene record"):
        read_scenes(str(path))
    path.write_text(json.dumps(good) + "\n")
    assert read_scenes(str(path)) == {"a": good["objects"]}
    with pytest.raises(UserError, match="does not exist"):
        read_scenes(str(tmp_path / "none.jsonl"))


def test_t2i_hook_finds_the_scenes_and_needs_one_for_every_record(tmp_path):
    from demo.scene_reader import t2i_metrics
    from src.errors import UserError
    from src.evaluation.hooks import Evaluation
    blank = np.full((32, 32, 3), 235, np.uint8)
    records = [{"id": key, "image": blank, "candidates": np.stack([blank, blank]), "first_sample": 1}
               for key in ("a", "b")]
    (tmp_path / "mindrecord").mkdir()
    data = str(tmp_path / "mindrecord" / "test.mindrecord")
    with pytest.raises(UserError, match="found no scenes.jsonl for .*test.mindrecord"):
        t2i_metrics(Evaluation("t2i", "test", data, str(tmp_path), {}, records))
    scene = [{"colour": "red", "shape": "circle", "position": "left"}]
    (tmp_path / "scenes.jsonl").write_text(json.dumps({"id": "a", "objects": scene}) + "\n")
    with pytest.raises(UserError, match=r"no scene for 1 of the 2 records \(first: b\)"):
        t2i_metrics(Evaluation("t2i", "test", data, str(tmp_path), {}, records))
    # found one folder up from a MindRecord; blank images hold no object: nothing found, nothing exact
    metrics = t2i_metrics(Evaluation("t2i", "test", data, str(tmp_path), {}, records[:1]))
    assert metrics["scene_objects"] == 1 and metrics["scene_found"] == metrics["scene_found_real_images"] == 0.0
    assert metrics["scene_exact_any_candidate"] == 0.0
    with pytest.raises(UserError, match="given a caption evaluation"):
        t2i_metrics(Evaluation("caption", "test", data, str(tmp_path), {}, []))
