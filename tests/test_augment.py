"""The batched view renderer against torchvision's PIL pipeline, view by view."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from sortkd.data.views import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    NUM_VIEWS,
    decode_view,
    encode_view,
    normalize_images,
    pad_images,
    render_views,
)


def _random_images(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)


def _torchvision_view(image: torch.Tensor, dy: int, dx: int, flip: int) -> torch.Tensor:
    """RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize, choices fixed."""
    pil = Image.fromarray(image.permute(1, 2, 0).numpy(), mode="RGB")
    pil = TF.pad(pil, 4)
    pil = TF.crop(pil, dy, dx, 32, 32)  # top = row offset, left = column offset
    if flip:
        pil = TF.hflip(pil)
    return TF.normalize(TF.to_tensor(pil), CIFAR100_MEAN, CIFAR100_STD)


def test_every_view_matches_torchvision_pil_pipeline():
    images = _random_images(3, seed=0)
    padded = pad_images(images)
    index = torch.arange(3).repeat_interleave(NUM_VIEWS)
    views = torch.arange(NUM_VIEWS).repeat(3)
    rendered = render_views(padded, index, views)
    assert rendered.shape == (3 * NUM_VIEWS, 3, 32, 32)
    expected = torch.stack(
        [
            _torchvision_view(images[i], *decode_view(v))
            for i, v in zip(index.tolist(), views.tolist())
        ]
    )
    assert torch.allclose(rendered, expected, rtol=0, atol=1e-6)


def test_view_ids_are_a_bijection_with_crop_and_flip():
    triples = [decode_view(v) for v in range(NUM_VIEWS)]
    assert len(set(triples)) == NUM_VIEWS
    assert {t[0] for t in triples} == set(range(9))
    assert {t[1] for t in triples} == set(range(9))
    assert {t[2] for t in triples} == {0, 1}
    assert [encode_view(*t) for t in triples] == list(range(NUM_VIEWS))
    # the tensor form agrees with the int form
    ids = torch.arange(NUM_VIEWS)
    dy, dx, flip = decode_view(ids)
    assert torch.equal(encode_view(dy, dx, flip), ids)
    assert torch.equal(torch.stack([dy, dx, flip], 1), torch.tensor(triples))
    # the documented formula
    assert encode_view(3, 7, 1) == (3 * 9 + 7) * 2 + 1


@pytest.mark.parametrize("bad", [(9, 0, 0), (0, -1, 0), (0, 0, 2)])
def test_encode_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match="must be in"):
        encode_view(*bad)


def test_decode_rejects_out_of_range():
    with pytest.raises(ValueError, match="0..161"):
        decode_view(162)


def test_same_view_id_gives_same_image_and_views_differ():
    images = _random_images(2, seed=1)
    padded = pad_images(images)
    index = torch.tensor([1, 1, 1, 0])
    views = torch.tensor([56, 56, 57, 56])
    out = render_views(padded, index, views)
    assert torch.equal(out[0], out[1])
    assert not torch.equal(out[0], out[2])  # 57 is 56 flipped
    assert torch.equal(out[2], out[0].flip(-1))
    assert not torch.equal(out[0], out[3])  # another image


def test_padding_is_zero_before_normalization():
    images = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    padded = pad_images(images)
    assert padded.shape == (1, 3, 40, 40) and padded.dtype == torch.uint8
    assert int(padded[:, :, 4:36, 4:36].min()) == 255
    assert int(padded.sum()) == 255 * 3 * 32 * 32
    # view (0, 0, no flip): the top 4 rows and left 4 columns come from the border
    out = render_views(padded, torch.tensor([0]), torch.tensor([encode_view(0, 0, 0)]))[0]
    mean = torch.tensor(CIFAR100_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR100_STD).view(3, 1, 1)
    border = (-mean / std).expand(3, 4, 32)
    assert torch.allclose(out[:, :4, :], border, atol=1e-6)
    assert torch.allclose(out[:, :, :4], (-mean / std).expand(3, 32, 4), atol=1e-6)
    assert torch.allclose(out[:, 4:, 4:], ((1 - mean) / std).expand(3, 28, 28), atol=1e-6)
    # view (8, 8, flip): the border is now at the bottom and, after the flip, on the left
    out = render_views(padded, torch.tensor([0]), torch.tensor([encode_view(8, 8, 1)]))[0]
    assert torch.allclose(out[:, 28:, :], (-mean / std).expand(3, 4, 32), atol=1e-6)
    assert torch.allclose(out[:, :, :4], (-mean / std).expand(3, 32, 4), atol=1e-6)
    assert torch.allclose(out[:, :28, 4:], ((1 - mean) / std).expand(3, 28, 28), atol=1e-6)


def test_centre_view_equals_test_transform():
    images = _random_images(4, seed=2)
    centre = encode_view(4, 4, 0)
    out = render_views(pad_images(images), torch.arange(4), torch.full((4,), centre))
    assert torch.equal(out, normalize_images(images))
    expected = TF.normalize(images.float() / 255, CIFAR100_MEAN, CIFAR100_STD)
    assert torch.allclose(normalize_images(images), expected, rtol=0, atol=1e-6)


def test_dtype_shape_device_and_custom_statistics():
    images = _random_images(5, seed=3)
    padded = pad_images(images)
    index = torch.tensor([4, 0, 2], dtype=torch.int64)
    views = torch.tensor([0, 80, 161], dtype=torch.int64)
    out = render_views(padded, index, views, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    assert out.dtype == torch.float32 and out.shape == (3, 3, 32, 32)
    assert out.device == padded.device
    dy, dx, flip = decode_view(161)
    crop = images[2].float().div(255)  # view 161 is (8, 8, flip): rows 4..31 of the image
    assert (dy, dx, flip) == (8, 8, 1)
    expected = (crop[:, 4:, 4:].flip(-1) - 0.5) / torch.tensor([0.25, 0.5, 1.0]).view(3, 1, 1)
    assert torch.allclose(out[2][:, :28, 4:], expected, atol=1e-6)


def test_bad_inputs_name_the_problem():
    padded = pad_images(_random_images(2, seed=4))
    with pytest.raises(ValueError, match=r"uint8 tensor \[N, 3, 32, 32\]"):
        pad_images(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"padded images must be a uint8 tensor \[N, 3, 40, 40\]"):
        render_views(padded[:, :, :32, :32], torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="views must be an int64 tensor"):
        render_views(padded, torch.tensor([0]), torch.tensor([0], dtype=torch.int32))
    with pytest.raises(ValueError, match="differ in size"):
        render_views(padded, torch.tensor([0, 1]), torch.tensor([0]))


def test_view_does_not_depend_on_its_position_in_the_batch():
    # The same (image, view) pair renders identically wherever it sits in a batch.
    images = _random_images(8, seed=5)
    padded = pad_images(images)
    gen = torch.Generator().manual_seed(6)
    index = torch.randint(0, 8, (512,), generator=gen)
    views = torch.randint(0, NUM_VIEWS, (512,), generator=gen)
    batch = render_views(padded, index, views)
    for b in (0, 137, 511):
        single = render_views(padded, index[b : b + 1], views[b : b + 1])
        assert torch.equal(batch[b], single[0])
    assert np.isfinite(batch.numpy()).all()
