"""Learning-rate schedules are pure functions of the step."""

from distlm.config import TrainConfig
from distlm.train.schedule import lr_at


def test_cosine_warms_up_peaks_and_ends_at_min():
    t = TrainConfig(lr=1.0, warmup_steps=10, steps=100, min_lr_ratio=0.1, schedule="cosine")
    assert lr_at(0, t) == 0.1 and lr_at(9, t) == 1.0
    assert lr_at(99, t) > 0.1 and abs(lr_at(100, t) - 0.1) < 1e-9
    lrs = [lr_at(s, t) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_wsd_is_flat_then_decays_linearly():
    t = TrainConfig(
        lr=1.0, warmup_steps=10, steps=100, min_lr_ratio=0.0, schedule="wsd", wsd_decay_fraction=0.2
    )
    assert lr_at(50, t) == lr_at(79, t) == 1.0
    assert abs(lr_at(89, t) - 0.5) < 1e-9 and lr_at(99, t) == 0.0
