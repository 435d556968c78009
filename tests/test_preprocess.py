import numpy as np

from rlir.data.preprocess import PreprocessConfig, frame_motion, segment


def moving(T, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (T, 8, 8, 3), dtype=np.uint8)


def test_static_stretch_is_dropped_and_counted():
    f = moving(60)
    f[20:30] = f[19]                      # frames 20..29 repeat frame 19: 10 static frames
    keep, counts = segment(f, None, PreprocessConfig(min_static_run=4, min_segment=16))
    assert keep == [(0, 20), (30, 60)]
    assert counts == {"invalid": 0, "static": 10, "short": 0, "kept": 50}


def test_brief_pause_is_kept():
    f = moving(40)
    f[10:12] = f[9]                       # two repeated frames: shorter than min_static_run
    keep, counts = segment(f, None, PreprocessConfig(min_static_run=4, min_segment=16))
    assert keep == [(0, 40)] and counts["static"] == 0


def test_invalid_frames_and_short_segments():
    f = moving(50)
    invalid = np.zeros(50, bool)
    invalid[10:14] = True                 # a menu: 0..9 becomes too short to keep
    keep, counts = segment(f, invalid, PreprocessConfig(min_segment=16))
    assert keep == [(14, 50)]
    assert counts == {"invalid": 4, "static": 0, "short": 10, "kept": 36}
    assert counts["invalid"] + counts["static"] + counts["short"] + counts["kept"] == 50


def test_frame_motion():
    f = np.zeros((3, 2, 2, 3), np.uint8)
    f[2] = 10
    np.testing.assert_allclose(frame_motion(f), [0.0, 10.0])
