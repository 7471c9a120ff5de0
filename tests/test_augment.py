"""SpecAugment on the fused features (train.specaug): mask counts and widths, valid frames only, the eval
path untouched, exact resume with masks drawn from the checkpointed RNG."""
from __future__ import annotations

import pytest
import torch

from helpers import run_config, train_and_sigkill
from speechfuse.training.augment import SpecAugment, band_mask, draw_bands, draw_batch_bands, time_warp
from speechfuse.training.checkpoint import load_checkpoint_file
from speechfuse.config import config_from_dict
from speechfuse.errors import ConfigError


def test_bands_keep_the_configured_count_and_widths_inside_the_valid_frames():
    gen = torch.Generator().manual_seed(0)
    sizes = torch.tensor([0, 1, 3, 17, 40, 200, 1000])
    seen_widths = set()
    for _ in range(200):
        bands = draw_bands(5, 12, sizes, gen)
        assert bands.shape == (7, 5, 2)
        start, end = bands[..., 0], bands[..., 1]
        assert bool((start >= 0).all()) and bool((end <= sizes[:, None]).all())
        width = end - start
        assert bool((width >= 0).all()) and bool((width <= 11).all())  # 0..W-1, as randint(0, W)
        seen_widths |= set(width[-1].tolist())
    assert seen_widths == set(range(12))  # every width 0..11 occurs on a long utterance, 12 never
    # a fraction: W = floor(0.1 * valid frames) per utterance
    for _ in range(100):
        width = draw_bands(3, 0.1, sizes, gen).diff(dim=-1)[..., 0]
        assert bool((width <= torch.floor(0.1 * sizes.double()).long().clamp_min(1)[:, None] - 1).all())


def test_masks_zero_only_valid_frames_and_bands():
    aug = SpecAugment(time_masks=2, time_width=6, feature_masks=3, feature_width=4).train()
    feats = torch.randn(3, 20, 16) + 5  # no zeros by chance
    lengths = torch.tensor([20, 9, 1])
    feats[1, 9:] = 7.0  # padding holds a recognisable value
    feats[2, 1:] = 7.0
    torch.manual_seed(3)
    time, feature = aug.masks(lengths, 20, 16)
    torch.manual_seed(3)
    out = aug(feats, lengths)
    expected = (band_mask(time, 20)[:, :, None] | band_mask(feature, 16)[:, None, :])
    expected &= (torch.arange(20)[None, :] < lengths[:, None])[:, :, None]
    assert torch.equal(out == 0, expected)
    assert torch.equal(out[~expected], feats[~expected])  # everything else unchanged, padding included
    assert bool(expected.any())  # something was masked
    assert time.shape == (3, 2, 2) and feature.shape == (3, 3, 2)


def test_batch_span_draws_masks_over_the_padded_length_as_s3prl_and_espnet():
    """span=batch (s3prl specaug.py L230-251, ESPnet mask_along_axis.py L31-42): W is a fraction of the padded
    length, starts lie in 0..max(1, T - the batch's widest band)-1, so a 10-frame utterance in a 40-frame batch gets
    widths up to 9 (per utterance: up to 1) and bands past its end; only its valid frames are ever zeroed."""
    gen = torch.Generator().manual_seed(0)
    widths, past_end = set(), 0
    for _ in range(300):
        bands = draw_batch_bands(2, 0.25, 40, 3, gen)  # W = floor(0.25 * 40) = 10
        width = bands[..., 1] - bands[..., 0]
        assert bool((width >= 0).all()) and bool((width <= 9).all())
        assert bool((bands[..., 0] < max(1, 40 - int(width.max()))).all())
        widths |= set(width[1].tolist())
        past_end += int((bands[1, :, 0] >= 10).sum())
    assert widths == set(range(10)) and past_end > 0
    short = draw_bands(2, 0.25, torch.tensor([10]), gen)
    assert int((short[..., 1] - short[..., 0]).max()) <= 1  # utterance span: W = floor(2.5) = 2
    # feature bands: W channels over D, starts below D - the widest
    bands = draw_batch_bands(4, 50, 64, 5, gen)
    width = bands[..., 1] - bands[..., 0]
    assert bool((width <= 49).all()) and bool((bands[..., 0] < max(1, 64 - int(width.max()))).all())

    aug = SpecAugment(time_masks=3, time_width=0.25, feature_masks=0, feature_width=1, span="batch").train()
    feats, lengths = torch.randn(2, 40, 8) + 5, torch.tensor([40, 10])
    feats[1, 10:] = 7.0
    torch.manual_seed(1)
    time, _ = aug.masks(lengths, 40, 8)
    torch.manual_seed(1)
    out = aug(feats, lengths)
    expected = band_mask(time, 40) & (torch.arange(40)[None, :] < lengths[:, None])
    assert torch.equal((out == 0).all(dim=-1), expected) and bool(expected.any())
    assert torch.equal(out[1, 10:], feats[1, 10:])  # padding untouched


def test_time_warp_moves_one_centre_frame_and_keeps_length_and_padding():
    # a linear ramp in time: bicubic resizing of each side keeps it monotone, so the warped utterance is still
    # increasing, starts and ends near the same values, and frame c' now holds what frame c held before
    n, window = 40, 5
    ramp = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3)
    feats = torch.full((2, 50, 3), 7.0)
    feats[0, :n] = ramp
    feats[1, :8] = ramp[:8]  # 8 <= 2 * window: left as it is
    gen = torch.Generator().manual_seed(0)
    moved = 0
    for _ in range(20):
        state = gen.get_state()
        out = time_warp(feats, torch.tensor([n, 8]), window, gen)
        gen_copy = torch.Generator().set_state(state)
        centre = int(torch.randint(window, n - window, (1,), generator=gen_copy))
        warped = int(torch.randint(centre - window, centre + window, (1,), generator=gen_copy)) + 1
        assert window <= centre < n - window and centre - window < warped <= centre + window
        assert torch.equal(out[:, n:], feats[:, n:])  # padding kept
        assert torch.equal(out[1], feats[1])
        assert bool((out[0, 1:n, 0] - out[0, :n - 1, 0] > -1e-4).all())  # still increasing
        # the right side, resized from [centre, n) to [warped, n), starts at the old centre frame's value
        assert out[0, warped, 0].item() == pytest.approx(centre + (n - centre) / (n - warped) * 0.5 - 0.5, abs=0.6)
        moved += warped != centre
    assert moved > 0
    aug = SpecAugment(time_masks=0, feature_masks=0, time_warp=window).train()
    torch.manual_seed(1)
    assert not torch.equal(aug(feats, torch.tensor([n, 8])), feats)  # this seed moves the centre
    assert torch.equal(aug.eval()(feats, torch.tensor([n, 8])), feats)


def test_eval_mode_and_no_config_leave_features_untouched():
    aug = SpecAugment().eval()
    feats = torch.randn(2, 50, 8)
    assert aug(feats, torch.tensor([50, 30])) is feats


def test_width_options_are_frames_or_fractions(tmp_path):
    from speechfuse.config import SpecAugConfig

    assert SpecAugConfig().model_dump() == {"time_masks": 2, "time_width": 40, "feature_masks": 4,
                                            "feature_width": 50, "time_warp": 0,
                                            "span": "utterance"}  # s3prl's ASR masks, no warp, per utterance
    assert SpecAugConfig(time_width=0.05).time_width == 0.05
    with pytest.raises(ValueError, match="whole number"):
        SpecAugConfig(time_width=2.5)
    with pytest.raises(ValueError):
        SpecAugConfig(feature_masks=-1)


def test_training_module_masks_in_train_mode_only(corpus):
    """The same weights with and without train.specaug: identical outputs in eval mode (what dev/test scoring
    runs), different ones in train mode."""
    from speechfuse.data import load_manifest
    from speechfuse.data.dataset import AudioDataset, collate_audio
    from speechfuse.data.loader import FusionBatch
    from speechfuse.training.learner import FusionTask
    from speechfuse.tasks import get_task

    _, manifests, upstream = corpus
    task = get_task("classify", hidden_dim=8)
    task.fit(load_manifest(manifests["train"]))
    plain_cfg = run_config(manifests, f"hf:{upstream}")
    aug_cfg = run_config(manifests, f"hf:{upstream}", specaug={"time_masks": 3, "time_width": 5, "feature_width": 8})
    torch.manual_seed(0)
    plain = FusionTask(config_from_dict(plain_cfg), task)
    augmented = FusionTask(config_from_dict(aug_cfg), task)
    augmented.load_state_dict(plain.state_dict())
    audio = collate_audio([AudioDataset(load_manifest(manifests["dev"]), 16000)[i] for i in range(4)])
    batch = FusionBatch(audio.utts, None, wavs=audio.wavs, wav_lengths=audio.wav_lengths)
    plain.eval(), augmented.eval()
    assert torch.equal(plain(batch)[0], augmented(batch)[0])
    plain.train(), augmented.train()
    plain.head.eval(), augmented.head.eval()  # no dropout: only the masks differ
    assert not torch.equal(plain(batch)[0], augmented(batch)[0])


@pytest.mark.slow
def test_killed_run_with_specaug_resumes_to_the_same_weights(corpus, tmp_path):
    from speechfuse.training.runner import train

    _, manifests, upstream = corpus
    data = run_config(manifests, f"hf:{upstream}", max_steps=4, val_every_steps=2,
                      specaug={"time_masks": 2, "time_width": 4, "feature_masks": 2, "feature_width": 8})
    cfg = config_from_dict(data)
    full = train(cfg, tmp_path / "full")
    weights = lambda run: load_checkpoint_file(run / "checkpoints" / "last.safetensors")["state_dict"]  # noqa: E731
    wf = weights(tmp_path / "full")

    train_and_sigkill(data, tmp_path / "killed", 2)
    resumed = train(cfg, tmp_path / "killed")
    for split in full:
        assert resumed[split] == pytest.approx(full[split], abs=1e-6)
    wr = weights(tmp_path / "killed")
    for k in wf:
        torch.testing.assert_close(wr[k], wf[k], rtol=1e-5, atol=1e-6, msg=k)
    # and the masks may not change on resume
    data["train"]["specaug"]["time_masks"] = 3
    with pytest.raises(ConfigError, match="specaug"):
        train(config_from_dict(data), tmp_path / "killed")
