"""Audio reading, manifests, duration batching, datasets and corpus adapters."""
from .adapters import bundled_fsdd_dir, folder_manifest, fsdd_manifests, librispeech_manifest
from .audio import audio_info, read_audio
from .batching import DurationBatchSampler, make_batches, padding_ratio
from .dataset import AudioDataset, AudioItem, Batch, collate_audio
from .manifest import (BadRow, ManifestError, Utterance, check_manifest, fill_durations, load_manifest,
                       validate_manifest, write_manifest)

__all__ = [
    "read_audio", "audio_info", "Utterance", "BadRow", "ManifestError", "load_manifest", "write_manifest",
    "check_manifest", "validate_manifest", "fill_durations", "DurationBatchSampler", "make_batches",
    "padding_ratio", "AudioDataset", "AudioItem", "Batch", "collate_audio", "fsdd_manifests",
    "folder_manifest", "librispeech_manifest", "bundled_fsdd_dir",
]
