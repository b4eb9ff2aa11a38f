"""Codebook interleaving patterns (course_lib.lm.patterns): exact inverses and hand-drawn layouts."""

from __future__ import annotations

import pytest
import torch

from course_lib.lm.patterns import DelayPattern, FlatteningPattern, ParallelPattern, make_pattern

PAD = 99
NAMES = ["flattening", "parallel", "delay"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k,t", [(1, 1), (1, 5), (4, 1), (3, 7), (4, 50)])
def test_round_trip_is_exact(name, k, t):
    pattern = make_pattern(name, k)
    codes = torch.randint(0, 64, (2, k, t), generator=torch.Generator().manual_seed(k * 100 + t))
    seq = pattern.interleave(codes, PAD)
    assert seq.shape == (2, k, pattern.seq_len(t))
    assert torch.equal(pattern.deinterleave(seq, t), codes)
    valid = pattern.valid_mask(t)
    assert int(valid.sum()) == k * t  # every token exactly once
    assert (seq[:, ~valid] == PAD).all() and not (seq[:, valid] == PAD).any()


def test_sequence_lengths():
    k, t = 4, 10
    assert FlatteningPattern(k).seq_len(t) == 40
    assert ParallelPattern(k).seq_len(t) == 10
    assert DelayPattern(k).seq_len(t) == 13
    assert DelayPattern(3, delays=[0, 2, 2]).seq_len(t) == 12


def test_delay_layout_by_hand():
    codes = torch.tensor([[[1, 2, 3], [4, 5, 6]]])  # K = 2, T = 3
    seq = DelayPattern(2).interleave(codes, PAD)
    assert torch.equal(seq, torch.tensor([[[1, 2, 3, PAD], [PAD, 4, 5, 6]]]))
    assert torch.equal(DelayPattern(3).time_grid(3), torch.tensor([[0, 1, 2, -1, -1],
                                                                   [-1, 0, 1, 2, -1],
                                                                   [-1, -1, 0, 1, 2]]))


def test_flattening_and_parallel_layout_by_hand():
    codes = torch.tensor([[[1, 2], [3, 4]]])  # K = 2, T = 2
    flat = FlatteningPattern(2).interleave(codes, PAD)
    assert torch.equal(flat, torch.tensor([[[1, PAD, 2, PAD], [PAD, 3, PAD, 4]]]))
    assert torch.equal(FlatteningPattern(2).time_grid(2), torch.tensor([[0, -1, 1, -1], [-1, 0, -1, 1]]))
    assert torch.equal(ParallelPattern(2).interleave(codes, PAD), codes)
    assert torch.equal(ParallelPattern(3).time_grid(2), torch.tensor([[0, 1]] * 3))


@pytest.mark.parametrize("name,coarse_first", [("flattening", True), ("delay", True), ("parallel", False)])
def test_fine_codes_come_after_the_coarse_ones_of_their_frame(name, coarse_first):
    pos = make_pattern(name, 4).positions(6)  # (K, T): step of token (k, t)
    later = (pos[1:] > pos[:-1]).all()
    assert bool(later) is coarse_first
    assert (pos[:, 1:] > pos[:, :-1]).all()  # frames in order within each codebook


def test_trailing_dims_are_carried_for_logits():
    pattern = DelayPattern(3)
    logits = torch.randn(2, 3, 5, 7)  # (B, K, T, V)
    seq = pattern.interleave(logits, 0.0)
    assert seq.shape == (2, 3, 7, 7)
    assert torch.equal(pattern.deinterleave(seq, 5), logits)


def test_pattern_errors():
    with pytest.raises(ValueError, match="unknown codebook pattern"):
        make_pattern("zigzag", 4)
    with pytest.raises(ValueError, match="K = 4 codebooks"):
        DelayPattern(4).interleave(torch.zeros(1, 3, 5, dtype=torch.long), PAD)
    with pytest.raises(ValueError, match="need 8 steps"):
        DelayPattern(4).deinterleave(torch.zeros(1, 4, 7, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="delays"):
        DelayPattern(2, delays=[1, 2])
    with pytest.raises(ValueError, match="n_q"):
        ParallelPattern(0)


def test_default_pad_is_minus_one():
    seq = DelayPattern(2).interleave(torch.tensor([[[5, 6], [7, 8]]]))
    assert torch.equal(seq, torch.tensor([[[5, 6, -1], [-1, 7, 8]]]))
