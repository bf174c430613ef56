"""benchmarks/bench_train.py's COCO-sized epoch projection from a measured Flickr30k-sized one."""
from benchmarks.bench_train import coco_projection


def test_coco_epoch_projected_from_the_flickr30k_epoch():
    # docs/benchmarks.md's Flickr30k epoch: 1,136 steps for 29,000 x 5 captions in 24.7 min.
    projection = coco_projection(1_136, 145_000, 24.7 * 60, 2.0)
    # 566,435 captions need 1,136 x 566,435 / 145,000 = 4,437.8 -> 4,438 steps, each costing the
    # measured epoch's (1,482 - 2) / 1,135 = 1.304 s after its first.
    assert projection == {"images": 113_287, "captions": 566_435, "steps_per_epoch": 4_438,
                          "seconds_per_step": 1.304, "minutes_per_epoch": 96.5}


def test_projection_of_an_epoch_of_coco_size_is_that_epoch():
    projection = coco_projection(4_426, 566_435, 6_000.0, 5.0)
    assert projection["steps_per_epoch"] == 4_426 and projection["minutes_per_epoch"] == 100.0
