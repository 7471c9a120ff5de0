"""The feature cache: extracted hidden states on disk, keyed by upstream and audio fingerprints."""
