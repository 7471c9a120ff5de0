"""FusionFrontend: N upstreams -> Aligner -> Interface, i.e. audio to fused features."""
from __future__ import annotations

import contextlib
from typing import Any, Sequence, Union

import torch
from torch import nn

from speechfuse.fusion.align import Aligner
from speechfuse.errors import ConfigError
from speechfuse.fusion.hidden import HiddenStates
from speechfuse.fusion.interfaces import build_interface
from speechfuse.fusion.upstream import Upstream, load_upstream


class FusionFrontend(nn.Module):
    """Fuse all layers of several upstreams into one feature sequence.

    upstreams:         Upstream instances or load_upstream spec strings ("hf:<folder>", "whisper-tiny.en", ...)
    interface:         an interface name (see speechfuse.list_interfaces())
    aligner_options:   keyword options of speechfuse.Aligner
    interface_options: keyword options of the interface, output_dim included
    """

    def __init__(self, upstreams: Sequence[Union[Upstream, str]], interface: str = "hconv",
                 aligner_options: dict[str, Any] | None = None,
                 interface_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        if len(upstreams) == 0:
            raise ConfigError("FusionFrontend: upstreams is empty; give at least one Upstream or spec string")
        loaded = [load_upstream(u) if isinstance(u, str) else u for u in upstreams]
        for i, u in enumerate(loaded):
            if not isinstance(u, Upstream):
                raise ConfigError(f"FusionFrontend: upstreams[{i}] is a {type(u).__name__}; "
                                  "give a speechfuse Upstream or a spec string for load_upstream")
        rates = {u.sample_rate for u in loaded}
        if len(rates) > 1:
            raise ConfigError("FusionFrontend: upstreams expect different sample rates "
                              f"{[(u.name, u.sample_rate) for u in loaded]}; they must share one input rate")
        self.upstreams = nn.ModuleList(loaded)
        self.aligner = Aligner.from_upstreams(loaded, **(aligner_options or {}))
        self.interface = build_interface(interface, num_layers=self.aligner.num_layers,
                                         hidden_size=self.aligner.hidden_size, num_models=len(loaded),
                                         **(interface_options or {}))
        self.output_dim = self.interface.output_dim

    @property
    def sample_rate(self) -> int:
        return self.upstreams[0].sample_rate

    @property
    def frame_rate(self) -> float:
        return self.aligner.frame_rate

    def extract(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> list[HiddenStates]:
        """Raw upstream outputs. Frozen upstreams run under no_grad (not inference_mode, whose tensors
        could not enter autograd later in the aligner's projections)."""
        frozen = not any(u.trainable for u in self.upstreams)
        with torch.no_grad() if frozen else contextlib.nullcontext():
            return [u(wavs, wav_lengths) for u in self.upstreams]

    def fuse(self, states: Sequence[HiddenStates]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.interface(self.aligner(states))

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fuse(self.extract(wavs, wav_lengths))
