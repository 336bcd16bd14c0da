"""CIFAR data: the standard download and reader, the generated demo archive and the batched
augmentation that renders training views on the device."""
from sortkd.data.views import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    CROP_OFFSETS,
    NUM_VIEWS,
    PAD,
    decode_view,
    encode_view,
    normalize_images,
    pad_images,
    render_views,
)
from sortkd.data.cifar import (
    CIFAR100_URL,
    ChecksumMismatch,
    CifarArrays,
    download_cifar100,
    extract_cifar_archive,
    load_arrays,
    read_cifar_python,
    save_arrays,
)
from sortkd.data.synthetic import write_cifar_archive

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR100_URL",
    "CROP_OFFSETS",
    "ChecksumMismatch",
    "CifarArrays",
    "NUM_VIEWS",
    "PAD",
    "decode_view",
    "download_cifar100",
    "encode_view",
    "extract_cifar_archive",
    "load_arrays",
    "normalize_images",
    "pad_images",
    "read_cifar_python",
    "render_views",
    "save_arrays",
    "write_cifar_archive",
]
