import numpy as np
import pytest

from models.tokenization import bucketed_length, length_batches, token_lengths, trim_padding


def test_token_lengths_end_at_the_last_non_pad_token():
    ids = np.array([
        [101, 7, 102, 0, 0, 0],
        [101, 0, 0, 9, 102, 0],  # pad ids inside a text (CLIP's id 0 is "!") do not shorten it
        [101, 5, 6, 7, 8, 102],
        [0, 0, 0, 0, 0, 0],
    ])
    assert token_lengths(ids).tolist() == [3, 5, 6, 0]
    assert token_lengths(np.zeros((0, 77), np.int64)).tolist() == []


@pytest.mark.parametrize("length, limit, expected", [(0, 77, 8), (1, 77, 8), (8, 77, 8), (9, 77, 16), (70, 77, 72), (73, 77, 77), (3, 4, 4)])
def test_bucketed_length(length, limit, expected):
    assert bucketed_length(length, limit) == expected


def test_trim_padding_keeps_the_longest_member_bucketed():
    ids = np.zeros((3, 77), np.int64)
    ids[0, :4] = [101, 1, 2, 102]
    ids[1, :11] = 5
    ids[1, 10] = 102
    ids[2, :2] = [101, 102]
    out = trim_padding(ids)
    assert out.shape == (3, 16) and (out == ids[:, :16]).all()
    full = np.ones((2, 77), np.int64)
    assert trim_padding(full).shape == (2, 77)
    assert trim_padding(np.zeros((0, 77), np.int64)).shape == (0, 77)


def test_length_batches_keep_a_long_text_apart_from_short_ones():
    lengths = np.array([12] * 20 + [70] + [14] * 11)
    groups = length_batches(lengths, 77, max_rows=32, max_tokens=4096)
    assert sorted(np.concatenate(groups).tolist()) == list(range(32))  # every row once
    assert [len(g) for g in groups] == [31, 1] and groups[1].tolist() == [20]
    # rows and padded tokens per call are bounded
    assert [len(g) for g in length_batches(np.full(10, 9), 77, max_rows=4, max_tokens=4096)] == [4, 4, 2]
    assert [len(g) for g in length_batches(np.full(10, 16), 77, max_rows=32, max_tokens=64)] == [4, 4, 2]
