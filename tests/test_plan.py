from collections import defaultdict

from data_pipeline.plan import assign_splits, group_split, make_units
from data_pipeline.records import VideoRecord


def corpus(groups=200, fakes=3):
    records = []
    for g in range(groups):
        original = f"part/{g:04d}.mp4"
        records.append(VideoRecord(uri="x", video=original, label=0, group=original, dataset="dfdc"))
        for f in range(fakes):
            records.append(VideoRecord(uri="x", video=f"part/{g:04d}_{f}.mp4", label=1, group=original, dataset="dfdc", original=original))
    return records


def test_no_group_is_split_across_train_and_val():
    records = assign_splits(corpus(), seed=7, val_fraction=0.25)
    splits = defaultdict(set)
    for r in records:
        splits[r.group].add(r.split)
    assert all(len(s) == 1 for s in splits.values())
    val = sum(s == {"val"} for s in splits.values())
    assert 30 <= val <= 70  # 25% of 200 groups, by hash


def test_split_is_deterministic_and_seeded():
    a = assign_splits(corpus(), seed=1, val_fraction=0.3)
    b = assign_splits(list(reversed(corpus())), seed=1, val_fraction=0.3)
    assert {r.video: r.split for r in a} == {r.video: r.split for r in b}
    c = assign_splits(corpus(), seed=2, val_fraction=0.3)
    assert {r.video: r.split for r in a} != {r.video: r.split for r in c}


def test_val_fraction_edges():
    assert {group_split(f"g{i}", 0, 0.0) for i in range(100)} == {"train"}
    assert {group_split(f"g{i}", 0, 1.0) for i in range(100)} == {"val"}


def test_official_split_is_kept():
    records = [VideoRecord(uri="x", video="a.mp4", label=0, group="a", dataset="ff", split="test")]
    assert assign_splits(records, 0, 0.5)[0].split == "test"


def test_units_keep_groups_whole_and_one_split():
    records = assign_splits(corpus(groups=50, fakes=3), seed=0, val_fraction=0.3)
    units = make_units(records, videos_per_task=10)
    by_video = {r.video: r for r in records}
    seen = []
    for u in units:
        assert {by_video[v].split for v in u.videos} == {u.split}
        assert len(u.videos) <= 10
        for v in u.videos:
            if by_video[v].original:  # the original comes before its fakes in the same unit
                assert u.videos.index(by_video[v].original) < u.videos.index(v)
        seen += u.videos
    assert sorted(seen) == sorted(by_video)
    assert make_units(records, 10) == units


def test_big_group_stays_whole():
    units = make_units(assign_splits(corpus(groups=3, fakes=8), 0, 0.0), videos_per_task=4)
    assert [len(u.videos) for u in units] == [9, 9, 9]
