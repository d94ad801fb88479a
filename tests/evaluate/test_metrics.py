"""Pure metrics (ddlm.evaluate.metrics) on hand-counted inputs."""

import math

import pytest
import torch

from ddlm.evaluate.metrics import bound_summary, known_word_fraction, sample_entropy, words


def test_entropy_of_known_histograms():
    assert sample_entropy([[0, 0, 1, 1]])["mean_entropy"] == pytest.approx(math.log(2))
    assert sample_entropy([[5, 5, 5, 5, 5]])["mean_entropy"] == 0.0
    assert sample_entropy([[0, 1, 2, 3]])["mean_entropy"] == pytest.approx(math.log(4))
    # counts 3, 1: -(3/4 log 3/4 + 1/4 log 1/4)
    h31 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert sample_entropy([[7, 7, 2, 7]])["mean_entropy"] == pytest.approx(h31)


def test_mean_is_over_samples_and_pooled_is_over_all_tokens():
    r = sample_entropy(torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]))
    assert r["entropies"] == [0.0, 0.0] and r["mean_entropy"] == 0.0
    assert r["pooled_entropy"] == pytest.approx(math.log(2))  # each sample is constant, together 50/50
    assert r["num_samples"] == 2 and r["num_tokens"] == 8
    r = sample_entropy([[0, 1], [0, 0, 0, 0, 1, 2, 3, 4]])  # lengths may differ
    h2 = -(4 / 8 * math.log(4 / 8) + 4 * (1 / 8) * math.log(1 / 8))
    assert r["entropies"] == pytest.approx([math.log(2), h2])
    assert r["mean_entropy"] == pytest.approx((math.log(2) + h2) / 2)
    # SE of the mean over samples: sample SD / sqrt(N); with two samples |h1 - h2| / 2
    assert r["entropy_se"] == pytest.approx(abs(math.log(2) - h2) / 2)
    assert math.isnan(sample_entropy([[0, 1]])["entropy_se"])


def test_tensor_and_list_agree():
    x = torch.randint(0, 7, (5, 30), generator=torch.Generator().manual_seed(0))
    assert sample_entropy(x) == sample_entropy(x.tolist())


@pytest.mark.parametrize("ids,match", [([], "no sample"), ([[1, 2], []], r"ids\[1\] is an empty sample"),
                                       (torch.zeros(3, dtype=torch.long), "shape"), ([[1.5]], "integer")])
def test_entropy_errors(ids, match):
    with pytest.raises(ValueError, match=match):
        sample_entropy(ids)


def test_words_split_on_non_letters_keeping_inner_apostrophes():
    assert words("Don't stop--'tis O'er! abc123def, well-met") == ["don't", "stop", "tis", "o'er", "abc", "def",
                                                                    "well", "met"]
    assert words("  ...  ") == []


def test_known_word_fraction_counts():
    ref = "The cat's dog sat. THE END"
    r = known_word_fraction(["The cat's hat", "the dog!"], ref)
    # words: the, cat's, hat, the, dog -> 4 of 5 known; distinct: the, cat's, hat, dog -> 3 known
    assert r["known_words"] == 4 and r["total_words"] == 5 and r["known_fraction"] == pytest.approx(0.8)
    assert r["distinct_words"] == 4 and r["distinct_known"] == 3 and r["reference_vocabulary"] == 5
    assert known_word_fraction("qzx vbn", [ref])["known_fraction"] == 0.0
    assert known_word_fraction("!!! ...", ref)["known_fraction"] is None  # no word at all
    with pytest.raises(ValueError, match="reference_texts holds no word"):
        known_word_fraction("the cat", "123 !!")


def test_bound_summary_units():
    r = bound_summary(math.log(8), 0.1, 1.0)
    assert r["bits_per_token"] == pytest.approx(3.0) and r["bits_per_char"] == pytest.approx(3.0)
    assert r["perplexity"] == pytest.approx(8.0) and r["bits_per_token_se"] == pytest.approx(0.1 / math.log(2))
    r = bound_summary(2.0, 0.0, 4.0)  # 4 characters per token: 2 nats over 4 characters
    assert r["bits_per_char"] == pytest.approx(0.5 / math.log(2)) and r["perplexity"] == pytest.approx(math.e ** 2)
    assert bound_summary(1.0, 0.1, None)["bits_per_char"] is None
    with pytest.raises(ValueError, match="se must be >= 0"):
        bound_summary(1.0, -0.1, 1.0)
    with pytest.raises(ValueError, match="chars_per_token must be a positive"):
        bound_summary(1.0, 0.1, 0.0)
    with pytest.raises(ValueError, match="nats_per_token must be finite"):
        bound_summary(float("nan"), 0.1, 1.0)
