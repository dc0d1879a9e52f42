"""Dataset pipeline: discovery, captions, buckets, frame selection, decoding, sampler and caches."""

from cadence.data.cache import CacheMissError, CacheReport, LatentCache, TextCache
from cadence.data.captions import apply_caption_dropout
from cadence.data.dataset import DatasetIndex, build_dataset_index, load_pixels
from cadence.data.media import DatasetError, MediaError, MediaItem, SkippedFile
from cadence.data.sampler import BucketBatchSampler

__all__ = [
    "BucketBatchSampler",
    "CacheMissError",
    "CacheReport",
    "DatasetError",
    "DatasetIndex",
    "LatentCache",
    "MediaError",
    "MediaItem",
    "SkippedFile",
    "TextCache",
    "apply_caption_dropout",
    "build_dataset_index",
    "load_pixels",
]
