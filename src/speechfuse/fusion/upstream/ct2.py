"""Our own reader of CTranslate2 `model.bin` files (format v6) and a converter of the Whisper
encoder in one into a transformers `WhisperEncoder` folder.

The layout (little-endian): a header (u32 format version, the spec name, u32 spec revision, u32 variable
count), then named variables (u8 rank, rank x u32 dims, u8 dtype id, u32 byte count, raw bytes), then a
u32 alias count and (alias, target) pairs; a string is a u16 byte length and that many bytes, trailing NULs
stripped.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from speechfuse.errors import UpstreamError
from speechfuse.io import speechfuse_home

# CTranslate2 dtype ids -> numpy dtypes; bf16 (5) has no numpy dtype and is read as raw uint16 bits
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),
}
_BF16 = 5
SUPPORTED_VERSION = 6


class _Reader:
    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self.handle = handle
        self.path = path

    def read(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        raw = self.handle.read(size)
        if len(raw) != size:
            raise UpstreamError(f"{self.path}: truncated CTranslate2 model file; reinstall the package that ships it")
        return struct.unpack("<" + fmt, raw)[0]

    def string(self) -> str:
        length = self.read("H")
        return self.handle.read(length).rstrip(b"\0").decode("utf-8")


def read_ct2_model(path: str | os.PathLike, prefix: str = "") -> tuple[str, dict[str, np.ndarray]]:
    """Read a CTranslate2 model.bin -> (spec name, {variable name: array}).

    Only variables whose name starts with `prefix` are kept (others are skipped without reading).
    bf16 variables are widened to float32. Aliases resolve to the array of their target.
    """
    path = Path(path)
    if not path.is_file():
        raise UpstreamError(f"CTranslate2 model file not found: {path}")
    variables: dict[str, np.ndarray] = {}
    with open(path, "rb") as handle:
        reader = _Reader(handle, path)
        version = reader.read("I")
        if version != SUPPORTED_VERSION:
            raise UpstreamError(
                f"{path}: CTranslate2 model format version {version}; this reader supports only "
                f"version {SUPPORTED_VERSION}"
            )
        spec = reader.string()
        reader.read("I")  # spec revision
        for _ in range(reader.read("I")):
            name = reader.string()
            rank = reader.read("B")
            dims = [reader.read("I") for _ in range(rank)]
            dtype_id = reader.read("B")
            num_bytes = reader.read("I")
            if not name.startswith(prefix):
                handle.seek(num_bytes, os.SEEK_CUR)
                continue
            if dtype_id not in _DTYPES:
                raise UpstreamError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
            array = np.frombuffer(handle.read(num_bytes), dtype=_DTYPES[dtype_id])
            if array.size != int(np.prod(dims)):
                raise UpstreamError(f"{path}: variable {name!r} has {array.size} values but dims {dims}")
            if dtype_id == _BF16:
                array = (array.astype(np.uint32) << 16).view(np.float32)
            variables[name] = array.reshape(dims)
        for _ in range(reader.read("I")):
            alias, target = reader.string(), reader.string()
            if alias.startswith(prefix) and target in variables:
                variables[alias] = variables[target]
    return spec, variables


def _whisper_encoder_state(variables: dict[str, np.ndarray], num_layers: int) -> dict[str, torch.Tensor]:
    """Map CTranslate2 WhisperSpec encoder variables onto transformers WhisperEncoder names."""

    def get(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(variables[f"encoder/{name}"], dtype=np.float32))

    state = {
        "conv1.weight": get("conv1/weight"),
        "conv1.bias": get("conv1/bias"),
        "conv2.weight": get("conv2/weight"),
        "conv2.bias": get("conv2/bias"),
        "embed_positions.weight": get("position_encodings/encodings"),
        "layer_norm.weight": get("layer_norm/gamma"),
        "layer_norm.bias": get("layer_norm/beta"),
    }
    for i in range(num_layers):
        src, dst = f"layer_{i}", f"layers.{i}"
        q_w, k_w, v_w = get(f"{src}/self_attention/linear_0/weight").chunk(3, dim=0)
        q_b, _k_b_zero, v_b = get(f"{src}/self_attention/linear_0/bias").chunk(3, dim=0)
        state.update({
            f"{dst}.self_attn_layer_norm.weight": get(f"{src}/self_attention/layer_norm/gamma"),
            f"{dst}.self_attn_layer_norm.bias": get(f"{src}/self_attention/layer_norm/beta"),
            f"{dst}.self_attn.q_proj.weight": q_w,
            f"{dst}.self_attn.q_proj.bias": q_b,
            f"{dst}.self_attn.k_proj.weight": k_w,
            f"{dst}.self_attn.v_proj.weight": v_w,
            f"{dst}.self_attn.v_proj.bias": v_b,
            f"{dst}.self_attn.out_proj.weight": get(f"{src}/self_attention/linear_1/weight"),
            f"{dst}.self_attn.out_proj.bias": get(f"{src}/self_attention/linear_1/bias"),
            f"{dst}.final_layer_norm.weight": get(f"{src}/ffn/layer_norm/gamma"),
            f"{dst}.final_layer_norm.bias": get(f"{src}/ffn/layer_norm/beta"),
            f"{dst}.fc1.weight": get(f"{src}/ffn/linear_0/weight"),
            f"{dst}.fc1.bias": get(f"{src}/ffn/linear_0/bias"),
            f"{dst}.fc2.weight": get(f"{src}/ffn/linear_1/weight"),
            f"{dst}.fc2.bias": get(f"{src}/ffn/linear_1/bias"),
        })
    return state


def whisper_encoder_from_ct2(model_bin: str | os.PathLike):
    """Build a transformers WhisperEncoder (float32, eval mode) from a CTranslate2 Whisper model.bin."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    spec, variables = read_ct2_model(model_bin, prefix="encoder/")
    if spec != "WhisperSpec":
        raise UpstreamError(f"{model_bin}: spec is {spec!r}, expected 'WhisperSpec' (a Whisper model)")
    num_layers = len({name.split("/")[1] for name in variables if name.startswith("encoder/layer_") and
                      not name.startswith("encoder/layer_norm")})
    num_positions, d_model = variables["encoder/position_encodings/encodings"].shape
    ffn_dim = variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]
    num_mel_bins = variables["encoder/conv1/weight"].shape[1]
    num_heads = int(variables["encoder/num_heads"])
    config = WhisperConfig(
        d_model=d_model,
        encoder_layers=num_layers,
        encoder_attention_heads=num_heads,
        encoder_ffn_dim=ffn_dim,
        num_mel_bins=num_mel_bins,
        max_source_positions=num_positions,
        activation_function="gelu",
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    encoder = WhisperEncoder(config)
    state = _whisper_encoder_state(variables, num_layers)
    # Whisper's key projection has no bias; the fused CTranslate2 bias holds zeros there
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if unexpected or missing:
        raise UpstreamError(
            f"{model_bin}: converted encoder does not match WhisperEncoder "
            f"(missing {sorted(missing)}, unexpected {sorted(unexpected)})"
        )
    return encoder.eval()


def converted_whisper_folder(model_bin: str | os.PathLike, name: str) -> Path:
    """Convert `model_bin`'s encoder into a transformers folder once; return the cached folder.

    The cache key hashes the file's size and mtime, so a reinstalled package is converted again.
    The folder is written to a temporary sibling and renamed, so a crash never leaves half a model.
    """
    from transformers import WhisperFeatureExtractor

    model_bin = Path(model_bin)
    stat = model_bin.stat()
    key = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = speechfuse_home() / f"{name}-{key}"
    if (folder / "config.json").is_file() and (folder / "preprocessor_config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        encoder = whisper_encoder_from_ct2(model_bin)
        encoder.save_pretrained(tmp)
        WhisperFeatureExtractor(feature_size=encoder.config.num_mel_bins).save_pretrained(tmp)
        try:
            tmp.rename(folder)
        except OSError:
            # another process finished the same conversion first; theirs is equally valid
            if not (folder / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
