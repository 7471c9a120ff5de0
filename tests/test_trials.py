"""Trial lists: the VoxCeleb1 format (read, write, errors naming file and line) and seeded generation."""
from __future__ import annotations

from math import comb

import pytest

from speechfuse.data.manifest import Utterance
from speechfuse.data.trials import (Trial, TrialError, check_trials, generate_trials, read_trials, unique_trials,
                                   write_trials)
from speechfuse.errors import ConfigError


def corpus(sizes: dict[str, int]) -> list[Utterance]:
    return [Utterance(id=f"{spk}/{i:03d}.wav", path=f"/x/{spk}{i}.wav", speaker=spk)
            for spk, n in sizes.items() for i in range(n)]


def test_read_voxceleb_format_and_round_trip(tmp_path):
    path = tmp_path / "veri_test2.txt"
    path.write_text("1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav\n\n"
                    "0 id10270/x6uYqmx31kE/00001.wav id10300/ize_eiCFEg0/00003.wav\n")
    trials = read_trials(path)
    assert [(t.label, t.enrol, t.test, t.line) for t in trials] == [
        (1, "id10270/x6uYqmx31kE/00001.wav", "id10270/8jEAjG6SegY/00008.wav", 1),
        (0, "id10270/x6uYqmx31kE/00001.wav", "id10300/ize_eiCFEg0/00003.wav", 3)]
    again = read_trials(write_trials(trials, tmp_path / "copy.txt"))
    assert [(t.label, t.enrol, t.test) for t in again] == [(t.label, t.enrol, t.test) for t in trials]


@pytest.mark.parametrize("bad, needle", [
    ("1 a.wav\n", "line 2: expected 3 fields"),
    ("yes a.wav b.wav\n", "line 2: the label must be 1 (target) or 0"),
    ("1 a.wav b.wav c.wav\n", "line 2: expected 3 fields"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad, needle):
    path = tmp_path / "trials.txt"
    path.write_text("0 a.wav b.wav\n" + bad)
    with pytest.raises(TrialError) as err:
        read_trials(path)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_unlabelled_lines_only_when_asked_and_never_mixed(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("a.wav b.wav\n\na.wav c.wav\n")
    assert [(t.label, t.enrol, t.test, t.line) for t in read_trials(path, unlabelled=True)] == [
        (None, "a.wav", "b.wav", 1), (None, "a.wav", "c.wav", 3)]
    with pytest.raises(TrialError, match="line 1: expected 3 fields 'LABEL ENROL TEST'"):
        read_trials(path)
    path.write_text("1 a.wav b.wav\na.wav c.wav\n")
    with pytest.raises(TrialError, match="line 2: mixes lines with a label and lines without"):
        read_trials(path, unlabelled=True)
    with pytest.raises(TrialError, match="line 1: expected 3 fields 'LABEL ENROL TEST' or 2 fields"):
        path.write_text("a.wav\n")
        read_trials(path, unlabelled=True)


def test_unknown_utterance_names_the_line(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("1 a b\n0 a zzz\n")
    with pytest.raises(TrialError, match=r"line 2: 'zzz' is not an utterance id"):
        check_trials(read_trials(path), ["a", "b"], str(path))
    with pytest.raises(TrialError, match="only"):
        check_trials([Trial(1, "a", "b")], ["a", "b"], "x")


def test_every_target_pair_and_as_many_nontargets():
    utts = corpus({"ann": 4, "bob": 3, "cy": 1})
    trials = generate_trials(utts)
    targets = [t for t in trials if t.label == 1]
    nontargets = [t for t in trials if t.label == 0]
    assert len(targets) == comb(4, 2) + comb(3, 2)  # cy has one utterance: no target pair
    assert len(nontargets) == len(targets)
    spk = {u.id: u.speaker for u in utts}
    assert all(spk[t.enrol] == spk[t.test] and t.enrol < t.test for t in targets)
    assert all(spk[t.enrol] != spk[t.test] and t.enrol < t.test for t in nontargets)
    assert len({(t.enrol, t.test) for t in trials}) == len(trials)  # no pair twice


def test_sampled_targets_are_seeded_and_reproducible():
    utts = corpus({f"s{i}": 12 for i in range(10)})  # 660 target pairs, 5940 non-target pairs
    a = generate_trials(utts, max_targets=50, seed=3)
    b = generate_trials(list(reversed(utts)), max_targets=50, seed=3)  # manifest order does not matter
    c = generate_trials(utts, max_targets=50, seed=4)
    assert a == b and a != c
    assert sum(t.label for t in a) == 50 and len(a) == 100
    spk = {u.id: u.speaker for u in utts}
    assert all((spk[t.enrol] == spk[t.test]) == bool(t.label) for t in a)


def test_fewer_nontargets_than_targets_takes_all_of_them():
    # 2 speakers x 5 utterances: 20 target pairs, 25 non-target pairs -> 20 of the 25
    # 2 speakers with 6 and 1: 15 target pairs, only 6 non-target pairs -> all 6
    trials = generate_trials(corpus({"a": 6, "b": 1}))
    assert sum(t.label for t in trials) == 15 and sum(1 - t.label for t in trials) == 6


def test_generation_errors():
    with pytest.raises(ConfigError, match="at least 2 speakers"):
        generate_trials(corpus({"a": 3}))
    with pytest.raises(ConfigError, match="have no 'speaker'"):
        generate_trials(corpus({"a": 2, "b": 2}) + [Utterance(id="x", path="/x")])
    with pytest.raises(ConfigError, match="no 'label'"):
        generate_trials(corpus({"a": 2, "b": 2}), field="label")
    with pytest.raises(ConfigError, match="max_targets"):
        generate_trials(corpus({"a": 2, "b": 2}), max_targets=0)


def test_groups_by_the_label_field_when_asked():
    utts = [Utterance(id=f"u{i}", path="/x", label=str(i % 2), speaker="same") for i in range(4)]
    trials = generate_trials(utts, field="label")
    assert {(t.enrol, t.test) for t in trials if t.label} == {("u0", "u2"), ("u1", "u3")}


def test_a_repeated_pair_is_one_trial_and_a_relabelled_one_is_refused(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("1 a b\n0 a c\n1 a b\n0 b a\n")
    kept = unique_trials(read_trials(path), str(path))
    assert [(t.label, t.enrol, t.test, t.line) for t in kept] == [(1, "a", "b", 1), (0, "a", "c", 2), (0, "b", "a", 4)]
    path.write_text("1 a b\n0 a c\n0 a b\n")
    with pytest.raises(TrialError, match=r"t.txt line 3: the pair a b is already on line 1 with label 1"):
        unique_trials(read_trials(path), str(path))
