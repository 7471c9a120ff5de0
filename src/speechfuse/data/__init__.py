"""Audio reading, manifests, duration batching, datasets and corpus adapters."""
from speechfuse.data.adapters import bundled_espeak_multilingual_dir, bundled_fsdd_dir, folder_manifest, fsdd_manifests, librispeech_manifest
from speechfuse.data.audio import AudioProbe, audio_info, probe_audio, read_audio
from speechfuse.data.batching import DurationBatchSampler, make_batches, padding_ratio
from speechfuse.data.dataset import AudioDataset, AudioItem, Batch, collate_audio
from speechfuse.data.manifest import (BadRow, ClipLimit, ManifestCheck, ManifestError, Utterance, check_manifest, clip_limit,
                       fill_durations, inspect_manifest, load_manifest, validate_manifest, write_manifest)

__all__ = [
    "read_audio", "audio_info", "probe_audio", "AudioProbe", "ClipLimit", "clip_limit", "ManifestCheck",
    "inspect_manifest", "Utterance", "BadRow", "ManifestError", "load_manifest", "write_manifest",
    "check_manifest", "validate_manifest", "fill_durations", "DurationBatchSampler", "make_batches",
    "padding_ratio", "AudioDataset", "AudioItem", "Batch", "collate_audio", "fsdd_manifests",
    "folder_manifest", "librispeech_manifest", "bundled_fsdd_dir", "bundled_espeak_multilingual_dir",
]
