"""The model: upstreams -> aligner -> interface (the frontend), and FusedModel, the unit users keep."""
