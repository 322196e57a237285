"""Every source layout, built small on the S3 server, listed into records."""

import json

import pytest

from data_pipeline.sources import SourceError, discover
from tests.corpus import metadata, put, zipped

V = b"not decoded while listing"


def by_video(scan):
    return {r.video: r for r in scan.records}


def reasons(scan):
    return {(q.video, q.reason) for q in scan.quarantine}


def test_dfdc_folders(bucket):
    put(bucket, {
        "dfdc_train_part_0/metadata.json": metadata({"a.mp4": ("REAL", None), "b.mp4": ("FAKE", "a.mp4"), "c.mp4": ("FAKE", "a.mp4"),
                                                     "gone.mp4": ("FAKE", "a.mp4")}),
        "dfdc_train_part_0/a.mp4": V, "dfdc_train_part_0/b.mp4": V, "dfdc_train_part_0/c.mp4": V,
        "dfdc_train_part_0/stray.mp4": V,
        "dfdc_train_part_1/metadata.json": b'{"x.mp4": {"label": "REAL"',
        "dfdc_train_part_1/x.mp4": V,
    })
    dataset, scan = discover(bucket)
    assert dataset == "dfdc"
    recs = by_video(scan)
    assert set(recs) == {"dfdc_train_part_0/a.mp4", "dfdc_train_part_0/b.mp4", "dfdc_train_part_0/c.mp4"}
    b = recs["dfdc_train_part_0/b.mp4"]
    assert (b.label, b.original, b.group) == (1, "dfdc_train_part_0/a.mp4", "dfdc_train_part_0/a.mp4")
    a = recs["dfdc_train_part_0/a.mp4"]
    assert (a.label, a.original, a.group, a.split) == (0, None, "dfdc_train_part_0/a.mp4", None)
    assert b.uri == f"{bucket}/dfdc_train_part_0/b.mp4" and b.member is None
    assert reasons(scan) == {
        ("dfdc_train_part_0/gone.mp4", "missing_file"),
        ("dfdc_train_part_0/stray.mp4", "no_metadata_entry"),
        ("dfdc_train_part_1/metadata.json", "malformed_metadata"),
        ("dfdc_train_part_1/x.mp4", "no_metadata_entry"),
    }


@pytest.mark.parametrize("inner", ["dfdc_train_part_7/", "dfdc_train_part_07/dfdc_train_part_7/"])
def test_dfdc_zip_parts_flat_and_nested(bucket, inner):
    put(bucket, {"dfdc_train_part_07.zip": zipped({
        f"{inner}metadata.json": metadata({"a.mp4": ("REAL", None), "b.mp4": ("FAKE", "a.mp4")}),
        f"{inner}a.mp4": V, f"{inner}b.mp4": V, f"{inner}unlisted.mp4": V,
    })})
    dataset, scan = discover(bucket)
    assert dataset == "dfdc"
    recs = by_video(scan)
    # Named as if unpacked, whatever the nesting.
    assert set(recs) == {"dfdc_train_part_7/a.mp4", "dfdc_train_part_7/b.mp4"}
    b = recs["dfdc_train_part_7/b.mp4"]
    assert b.uri == f"{bucket}/dfdc_train_part_07.zip" and b.member == f"{inner}b.mp4"
    assert b.original == "dfdc_train_part_7/a.mp4"
    assert reasons(scan) == {("dfdc_train_part_7/unlisted.mp4", "no_metadata_entry")}


def test_unreadable_zip_is_quarantined(bucket):
    put(bucket, {"dfdc_train_part_0.zip": b"PK\x03\x04 but not really a zip", "dfdc_train_part_1/metadata.json": metadata({"a.mp4": ("REAL", None)}),
                 "dfdc_train_part_1/a.mp4": V,
                 "dfdc_train_part_2.zip": b"PK\x05\x06"})  # shorter than a zip's end record: s3fs refused the seek
    _, scan = discover(bucket)
    assert reasons(scan) == {("dfdc_train_part_0.zip", "unreadable_zip"), ("dfdc_train_part_2.zip", "unreadable_zip")}
    assert all(q.detail.startswith("not a readable zip file") for q in scan.quarantine)
    assert [r.video for r in scan.records] == ["dfdc_train_part_1/a.mp4"]


def test_dfdc_test_set_labels_csv(bucket):
    put(bucket, {"labels.csv": b"filename,label\naa.mp4,1\nbb.mp4,0\ncc.mp4,7\n", "aa.mp4": V, "bb.mp4": V, "cc.mp4": V})
    _, scan = discover(bucket, dataset="dfdc")
    recs = by_video(scan)
    assert {v: (r.label, r.split) for v, r in recs.items()} == {"aa.mp4": (1, "test"), "bb.mp4": (0, "test")}
    assert reasons(scan) == {("cc.mp4", "malformed_metadata")}


def test_faceforensics(bucket):
    files = {}
    for comp in ("c23", "c40"):
        for vid in ("000", "003", "010", "020"):
            files[f"original_sequences/youtube/{comp}/videos/{vid}.mp4"] = V
        for method in ("Deepfakes", "FaceSwap"):
            for pair in ("000_003", "003_000", "010_020"):
                files[f"manipulated_sequences/{method}/{comp}/videos/{pair}.mp4"] = V
    files["original_sequences/actors/c23/videos/01__walking.mp4"] = V
    files["manipulated_sequences/DeepFakeDetection/c23/videos/01_02__walking__ABCD1234.mp4"] = V
    files["manipulated_sequences/Deepfakes/c23/videos/oops.mp4"] = V
    files["splits/train.json"] = json.dumps([["000", "003"]]).encode()
    files["splits/test.json"] = json.dumps([["010", "020"]]).encode()
    put(bucket, files)
    dataset, scan = discover(bucket)
    assert dataset == "faceforensics"
    recs = by_video(scan)
    fake = recs["manipulated_sequences/Deepfakes/c23/videos/003_000.mp4"]
    assert (fake.label, fake.method, fake.original) == (1, "Deepfakes", "original_sequences/youtube/c23/videos/003.mp4")
    # Both identities of a pair, every method and compression: one group, the official split.
    pair = [r for r in scan.records if any(s in r.video for s in ("000", "003"))]
    assert len({r.group for r in pair}) == 1 and {r.split for r in pair} == {"train"}
    other = [r for r in scan.records if any(s in r.video for s in ("/010", "/020", "010_020"))]
    assert len({r.group for r in other}) == 1 and {r.split for r in other} == {"test"}
    assert other[0].group != pair[0].group
    dfd = recs["manipulated_sequences/DeepFakeDetection/c23/videos/01_02__walking__ABCD1234.mp4"]
    assert dfd.original == "original_sequences/actors/c23/videos/01__walking.mp4"
    assert dfd.group == recs["original_sequences/actors/c23/videos/01__walking.mp4"].group
    assert reasons(scan) == {("manipulated_sequences/Deepfakes/c23/videos/oops.mp4", "unrecognised_path")}


def test_a_subset_of_faceforensics_by_include(bucket):
    """FF++'s protocol: its c23 videos of the four methods and their YouTube originals; DFD, other
    compressions and FaceShifter left out and counted, not quarantined."""
    files = {f"original_sequences/youtube/{c}/videos/{n}.mp4": V for c in ("c23", "c40") for n in ("000", "003")}
    files |= {f"manipulated_sequences/{m}/{c}/videos/003_000.mp4": V
              for m in ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter") for c in ("c23", "c40")}
    files["original_sequences/actors/c23/videos/01__walking.mp4"] = V
    files["manipulated_sequences/DeepFakeDetection/c23/videos/01_02__walking__ABCD1234.mp4"] = V
    files["manipulated_sequences/Deepfakes/c40/videos/oops.mp4"] = V  # left out, so not quarantined either
    files["manipulated_sequences/FaceSwap/c23/videos/000_003.mp4"] = V  # its original 000 is kept
    put(bucket, files)
    include = ["original_sequences/youtube/c23/*", "manipulated_sequences/Deepfakes/c23/*", "manipulated_sequences/Face2Face/c23/*",
               "manipulated_sequences/FaceSwap/c23/*", "manipulated_sequences/NeuralTextures/c23/*"]
    _, scan = discover(bucket, include=include)
    kept = by_video(scan)
    assert set(kept) == {"original_sequences/youtube/c23/videos/000.mp4", "original_sequences/youtube/c23/videos/003.mp4",
                         "manipulated_sequences/FaceSwap/c23/videos/000_003.mp4",
                         *(f"manipulated_sequences/{m}/c23/videos/003_000.mp4" for m in ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"))}
    assert scan.left_out == len(files) - len(kept) and not scan.quarantine
    assert kept["manipulated_sequences/Deepfakes/c23/videos/003_000.mp4"].original == "original_sequences/youtube/c23/videos/003.mp4"
    # a fake kept without its original: nothing to reuse
    _, fakes_only = discover(bucket, include=["manipulated_sequences/Deepfakes/c23/*"])
    assert [r.original for r in fakes_only.records] == [None]


def test_celebdf(bucket):
    put(bucket, {
        "Celeb-real/id0_0000.mp4": V, "Celeb-real/id1_0001.mp4": V, "YouTube-real/00005.mp4": V,
        "Celeb-synthesis/id0_id1_0000.mp4": V, "Celeb-synthesis/id1_id0_0009.mp4": V, "Celeb-synthesis/what.mp4": V,
        "List_of_testing_videos.txt": b"1 YouTube-real/00005.mp4\n0 Celeb-synthesis/id1_id0_0009.mp4\n",
    })
    dataset, scan = discover(bucket)
    assert dataset == "celebdf"
    recs = by_video(scan)
    fake = recs["Celeb-synthesis/id0_id1_0000.mp4"]
    assert (fake.label, fake.original, fake.group) == (1, "Celeb-real/id0_0000.mp4", recs["Celeb-real/id0_0000.mp4"].group)
    assert recs["Celeb-synthesis/id1_id0_0009.mp4"].original is None  # its original is not in the corpus
    assert {v for v, r in recs.items() if r.split == "test"} == {"YouTube-real/00005.mp4", "Celeb-synthesis/id1_id0_0009.mp4"}
    assert reasons(scan) == {("Celeb-synthesis/what.mp4", "unrecognised_path")}


def test_unknown_layout_says_what_was_expected(bucket):
    put(bucket, {"videos/a.mp4": V, "notes.txt": b"x"})
    with pytest.raises(SourceError) as e:
        discover(bucket)
    msg = str(e.value)
    assert bucket in msg and "metadata.json" in msg and "original_sequences" in msg and "Celeb-real" in msg
    assert "videos/a.mp4" in msg


def test_wrong_dataset_flag_and_empty_source(bucket):
    put(bucket, {"Celeb-real/id0_0000.mp4": V})
    with pytest.raises(SourceError, match="does not look like faceforensics"):
        discover(bucket, dataset="faceforensics")
    with pytest.raises(SourceError, match="not one of"):
        discover(bucket, dataset="youtube8m")
    with pytest.raises(SourceError, match="empty or does not exist"):
        discover(bucket + "-nothing-here")


def test_local_folder_source(tmp_path):
    put(str(tmp_path), {"dfdc_train_part_0/metadata.json": metadata({"a.mp4": ("REAL", None)}), "dfdc_train_part_0/a.mp4": V})
    _, scan = discover(str(tmp_path))
    assert [r.video for r in scan.records] == ["dfdc_train_part_0/a.mp4"]


def test_names_in_metadata_and_zips_never_leave_the_source(bucket):
    """Stored names are not paths to follow: metadata.json keys that point outside their part are not
    videos of it (nothing is read from there), and zip members are read in memory, named inside
    their part, whatever their names say."""
    put(bucket, {"elsewhere/secret.mp4": V})
    escapes = {"../../elsewhere/secret.mp4": ("REAL", None), "/elsewhere/secret.mp4": ("REAL", None),
               "s3://other-bucket/x.mp4": ("REAL", None), "a.mp4": ("REAL", None)}
    put(f"{bucket}/src", {
        "dfdc_train_part_0/metadata.json": metadata(escapes), "dfdc_train_part_0/a.mp4": V,
        "dfdc_train_part_1.zip": zipped({
            "dfdc_train_part_1/metadata.json": metadata({"../evil.mp4": ("FAKE", None), "b.mp4": ("REAL", None)}),
            "dfdc_train_part_1/b.mp4": V, "../evil.mp4": V, "dfdc_train_part_1/../../evil.mp4": V}),
    })
    _, scan = discover(f"{bucket}/src")
    recs = by_video(scan)
    assert set(recs) == {"dfdc_train_part_0/a.mp4", "dfdc_train_part_1/b.mp4"}
    assert all(r.uri.startswith(f"{bucket}/src/") for r in recs.values())
    assert all(".." not in r.video and ".." not in (r.member or "") for r in recs.values())
    # Each is counted, under the name it was given, and nothing was read from where it points.
    assert reasons(scan) == {("/elsewhere/secret.mp4", "missing_file"),
                             ("dfdc_train_part_0/../../elsewhere/secret.mp4", "missing_file"),
                             ("dfdc_train_part_0/s3://other-bucket/x.mp4", "missing_file"),
                             ("dfdc_train_part_1/../evil.mp4", "missing_file"),
                             ("dfdc_train_part_1.zip/../evil.mp4", "no_metadata_entry"),
                             ("dfdc_train_part_1.zip/dfdc_train_part_1/../../evil.mp4", "no_metadata_entry")}
