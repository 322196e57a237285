"""Self-blended images (train/data/sbi.py): reproducible from the seed alone, a mask that stays on the face
and inside the crop, blending that changes only what is under the mask, clear errors for bad landmarks."""

import numpy as np
import pytest
import torch

from train.data.sbi import blend, gallery, mask_from_landmarks, move_together, self_blend, soften_mask, source_and_target

# A frontal face in a crop with a 0.3 margin: eyes, nose, mouth corners as fractions of width, height.
FRONTAL = [[0.38, 0.42], [0.62, 0.42], [0.5, 0.52], [0.41, 0.63], [0.59, 0.63]]


def face_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Texture plus a smooth gradient: every transform leaves a visible trace on it."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs / width, ys / height, (xs + ys) / (width + height)]) * 200
    noise = rng.integers(0, 55, size=(3, height, width))
    return torch.from_numpy((base + noise).astype(np.uint8))


def pixel(point, height, width):
    return min(int(point[1] * height), height - 1), min(int(point[0] * width), width - 1)


@pytest.mark.parametrize("landmarks", [FRONTAL, None])
def test_same_seed_same_bytes_other_seed_differs(landmarks):
    image = face_image(224, 224)
    _, out1, mask1 = self_blend(image, landmarks, np.random.default_rng(7))
    _, out2, mask2 = self_blend(image, landmarks, np.random.default_rng(7))
    assert torch.equal(out1, out2) and torch.equal(mask1, mask2)
    _, out3, mask3 = self_blend(image, landmarks, np.random.default_rng(8))
    assert not torch.equal(out1, out3)
    assert not torch.equal(mask1, mask3)


def test_no_global_randomness_used():
    image = face_image(128, 128)
    np.random.seed(0)
    torch.manual_seed(0)
    _, out1, _ = self_blend(image, FRONTAL, np.random.default_rng(3))
    np.random.seed(1)
    torch.manual_seed(1)
    _, out2, _ = self_blend(image, FRONTAL, np.random.default_rng(3))
    assert torch.equal(out1, out2)


@pytest.mark.parametrize("landmarks", [FRONTAL, None])
def test_mask_all_but_zero_on_border_and_on_the_face(landmarks):
    size = 224
    for seed in range(20):
        _, _, mask = self_blend(face_image(size, size), landmarks, np.random.default_rng(seed))
        assert mask.dtype == torch.float32 and mask.shape == (size, size)
        assert 0 <= mask.min() and mask.max() <= 1
        border = torch.cat([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
        # The feathered edge's far tail may touch the border once the mask moves with the source
        # (up to 3% across): nothing visible is blended there.
        assert border.max() < 0.02, f"seed {seed}: mask reaches the crop's edge ({border.max():.3f})"
        for point in FRONTAL:
            y, x = pixel(point, size, size)
            assert mask[y - 2:y + 3, x - 2:x + 3].min() > 0, f"seed {seed}: no mask around {point}"


def test_hard_mask_covers_the_landmarks():
    for seed in range(20):
        face = mask_from_landmarks((224, 224), FRONTAL, np.random.default_rng(seed))
        assert face.dtype == np.float32 and set(np.unique(face)) <= {0.0, 1.0}
        assert all(face[pixel(p, 224, 224)] == 1 for p in FRONTAL)
        # Brows to chin, not only the eyes-to-mouth triangle the five points span.
        rows = np.flatnonzero(face.any(axis=1))
        assert rows[0] < 0.42 * 224 - 20 and rows[-1] > 0.63 * 224 + 20


def test_mask_follows_the_face_orientation():
    # A long face, upright, then rolled 90 degrees about the crop's centre: the mask turns with it.
    upright = np.array([[0.44, 0.35], [0.56, 0.35], [0.5, 0.5], [0.45, 0.65], [0.55, 0.65]])
    rolled = np.stack([1 - upright[:, 1], upright[:, 0]], axis=1)

    def extents(landmarks):
        spans = []
        for seed in range(10):
            face = mask_from_landmarks((200, 200), landmarks, np.random.default_rng(seed))
            spans.append((np.ptp(np.flatnonzero(face.any(axis=0))), np.ptp(np.flatnonzero(face.any(axis=1)))))
        return np.mean(spans, axis=0)  # mean width, mean height

    width, height = extents(upright)
    assert height > 1.2 * width
    width, height = extents(rolled)
    assert width > 1.2 * height


def test_mask_from_the_margin_without_landmarks():
    margin = 0.3
    lo, hi = margin / (1 + 2 * margin), (1 + margin) / (1 + 2 * margin)
    for seed in range(10):
        face = mask_from_landmarks((300, 300), None, np.random.default_rng(seed), margin)
        ys, xs = np.nonzero(face)
        assert abs(ys.mean() - 150) < 15 and abs(xs.mean() - 150) < 15
        # Inscribed in the box, give or take the random deformation.
        assert xs.min() > (lo - 0.06) * 300 and xs.max() < (hi + 0.06) * 300
        assert (xs.max() - xs.min()) > 0.75 * (hi - lo) * 300
    wide = mask_from_landmarks((300, 300), None, np.random.default_rng(0), margin=0.1)
    narrow = mask_from_landmarks((300, 300), None, np.random.default_rng(0), margin=0.5)
    assert wide.sum() > narrow.sum()


@pytest.mark.parametrize("shift", [(-0.45, 0.0), (0.0, 0.45), (0.42, -0.4)])
def test_points_partly_outside_the_crop(shift):
    landmarks = np.array(FRONTAL) + np.array(shift)
    assert (landmarks < 0).any() or (landmarks > 1).any()
    for seed in range(5):
        _, out, mask = self_blend(face_image(128, 128), landmarks, np.random.default_rng(seed))
        assert torch.isfinite(mask).all() and 0 <= mask.min() and mask.max() <= 1
        assert mask.max() > 0
        assert out.shape == (3, 128, 128) and out.dtype == torch.uint8


@pytest.mark.parametrize("landmarks", [np.full((5, 2), 0.5), np.array(FRONTAL) + 5.0])
def test_unusable_points_fall_back_to_the_face_box(landmarks):
    # All points in one spot, or all far outside: the landmark mask would be (nearly) empty.
    face = mask_from_landmarks((128, 128), landmarks, np.random.default_rng(0))
    box = mask_from_landmarks((128, 128), None, np.random.default_rng(0))
    assert np.array_equal(face, box)


def test_blend_touches_only_the_mask():
    rng = np.random.default_rng(0)
    source = torch.from_numpy(rng.integers(0, 256, (3, 40, 50), dtype=np.uint8))
    target = torch.from_numpy(rng.integers(0, 256, (3, 40, 50), dtype=np.uint8))
    mask = torch.zeros(40, 50)
    mask[10:30, 10:20] = 1.0
    mask[10:30, 20:30] = torch.linspace(0.1, 0.9, 10)
    out = blend(source, target, mask)
    assert out.dtype == torch.uint8 and out.shape == source.shape
    off, on, part = mask == 0, mask == 1, (mask > 0) & (mask < 1)
    assert torch.equal(out[:, off], target[:, off])
    assert torch.equal(out[:, on], source[:, on])
    expected = (source.float() * mask + target.float() * (1 - mask)).round()
    assert torch.allclose(out[:, part].float(), expected[:, part], atol=1)


@pytest.mark.parametrize("landmarks", [FRONTAL, None])
def test_self_blend_is_its_real_counterpart_off_the_mask_and_changed_on_it(landmarks):
    image = face_image(160, 160)
    pixels = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    altered_real = []
    for seed in range(8):
        real, out, mask = self_blend(image, landmarks, np.random.default_rng(seed))
        # The same steps by hand, from the same seed: self_blend is exactly their composition.
        rng = np.random.default_rng(seed)
        face = mask_from_landmarks((160, 160), landmarks, rng)
        source, target = source_and_target(pixels, rng)
        source, face = move_together(source, face, rng)
        assert np.array_equal(mask.numpy(), soften_mask(face, rng))
        assert torch.equal(real, torch.from_numpy(target.copy()).permute(2, 0, 1))
        # The pseudo-fake and the real it trains beside differ only under the mask. Before, the real
        # was always the untouched crop, while the pseudo-fake's whole background carried the colour
        # change whenever it went to the target: a shortcut off the face.
        off = mask == 0
        assert off.any() and torch.equal(out[:, off], real[:, off])
        on = mask > 0
        assert (out[:, on] != real[:, on]).any(), f"seed {seed}: nothing changed under the mask"
        altered_real.append(not torch.equal(real, image))
    assert any(altered_real) and not all(altered_real)  # the change goes to either side


def test_one_copy_altered():
    pixels = np.ascontiguousarray(face_image(96, 96).permute(1, 2, 0).numpy())
    target_untouched = []
    for seed in range(20):
        source, target = source_and_target(pixels, np.random.default_rng(seed))
        assert source.shape == target.shape == pixels.shape and source.dtype == target.dtype == np.uint8
        assert np.array_equal(source, pixels) != np.array_equal(target, pixels)  # one of them, never both
        target_untouched.append(np.array_equal(target, pixels))
    assert any(target_untouched) and not all(target_untouched)


def test_the_mask_moves_with_the_source():
    """The paper's randaffine moves the source and the mask together: the mask stays on the moved face."""
    for seed in range(10):
        face = mask_from_landmarks((200, 200), FRONTAL, np.random.default_rng(seed))
        source = np.repeat((face * 255).astype(np.uint8)[:, :, None], 3, axis=2)  # the face region, white
        moved, mask = move_together(source, face, np.random.default_rng(100 + seed))
        assert not np.array_equal(mask, face)
        white = moved[:, :, 0] >= 128
        overlap = (white & (mask == 1)).sum() / (white | (mask == 1)).sum()
        assert overlap > 0.98, f"seed {seed}: the mask left the moved face (IoU {overlap:.3f})"


@pytest.mark.parametrize("size", [(64, 64), (128, 128), (224, 224), (380, 380), (120, 200), (200, 90)])
@pytest.mark.parametrize("landmarks", [FRONTAL, None])
def test_shapes_and_dtypes(size, landmarks):
    height, width = size
    image = face_image(height, width)
    _, out, mask = self_blend(image, landmarks, np.random.default_rng(1))
    assert out.shape == (3, height, width) and out.dtype == torch.uint8
    assert mask.shape == (height, width) and mask.dtype == torch.float32
    assert 0 <= mask.min() and 0 < mask.max() <= 1
    assert torch.equal(image, face_image(height, width)), "the input was modified"


@pytest.mark.parametrize("landmarks, problem", [
    (FRONTAL[:4], "shape"),
    ([p + [0.0] for p in FRONTAL], "shape"),
    (np.array(FRONTAL).ravel(), "shape"),
    ([[0.38, 0.42], [0.62], [0.5, 0.52], [0.41, 0.63], [0.59, 0.63]], "pairs"),
    ([["a", "b"]] * 5, "pairs"),
    ([[0.38, np.nan]] + FRONTAL[1:], "not finite"),
    (FRONTAL[:4] + [[np.inf, 0.6]], r"not finite .*\[4\]"),
])
def test_bad_landmarks_raise(landmarks, problem):
    with pytest.raises(ValueError, match=problem):
        self_blend(face_image(64, 64), landmarks, np.random.default_rng(0))


def test_bad_image_and_margin_raise():
    with pytest.raises(ValueError, match="uint8"):
        self_blend(face_image(64, 64).float(), FRONTAL, np.random.default_rng(0))
    with pytest.raises(ValueError, match="3 x H x W"):
        self_blend(face_image(64, 64)[:1], FRONTAL, np.random.default_rng(0))
    with pytest.raises(ValueError, match="margin"):
        self_blend(face_image(64, 64), None, np.random.default_rng(0), margin=-0.1)


def test_gallery_fits_the_rows():
    rows = []
    for seed in range(3):
        image = face_image(64, 64, seed)
        _, out, mask = self_blend(image, FRONTAL, np.random.default_rng(seed))
        rows.append((image, mask, out))  # (real, mask, pseudo-fake)
    grid = gallery(rows)
    assert grid.mode == "RGB" and grid.size == (3 * 64, 3 * 64)
    pixels = np.asarray(grid)
    assert np.array_equal(pixels[64:128, :64], rows[1][0].permute(1, 2, 0).numpy())
    assert np.array_equal(pixels[:64, 64:128, 0], (rows[0][1] * 255).round().to(torch.uint8).numpy())
    # Rows of different sizes share the largest tile.
    big = face_image(100, 80)
    grid = gallery(rows[:1] + [(big, torch.zeros(100, 80), big)])
    assert grid.size == (3 * 80, 2 * 100)
    with pytest.raises(ValueError):
        gallery([])
