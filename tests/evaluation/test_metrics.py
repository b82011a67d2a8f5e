"""pass@k against hand-computed values, text metrics from the maintained libraries, routing counts."""

from __future__ import annotations

import math

import pytest

from evaluation import metrics


@pytest.mark.parametrize(("n", "c", "k", "want"), [
    (5, 2, 1, 2 / 5),                      # pass@1 is the share of correct samples
    (5, 2, 2, 1 - 3 / 10),                 # 1 - C(3,2)/C(5,2)
    (5, 2, 3, 1 - 1 / 10),                 # 1 - C(3,3)/C(5,3)
    (5, 2, 4, 1.0),                        # fewer than k wrong samples: some draw always holds a correct one
    (10, 0, 5, 0.0),
    (10, 10, 1, 1.0),
    (20, 3, 10, 1 - math.comb(17, 10) / math.comb(20, 10)),
    (1, 1, 1, 1.0),
])
def test_pass_at_k_hand_computed(n: int, c: int, k: int, want: float) -> None:
    assert metrics.pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)


def test_pass_at_k_large_n_is_stable_and_bad_input_raises() -> None:
    assert metrics.pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert 0.0 < metrics.pass_at_k(1000, 1, 500) < 1.0
    for bad in [(0, 0, 1), (5, 6, 1), (5, 2, 6), (5, 2, 0)]:
        with pytest.raises(ValueError):
            metrics.pass_at_k(*bad)


def test_mean_pass_at_k_over_problems() -> None:
    counts = [(5, 2), (5, 0), (5, 5)]
    assert metrics.mean_pass_at_k(counts, 1) == pytest.approx((0.4 + 0.0 + 1.0) / 3)
    assert metrics.mean_pass_at_k(counts, 2) == pytest.approx((0.7 + 0.0 + 1.0) / 3)
    assert metrics.mean_pass_at_k(counts, 6) is None  # no problem has 6 samples


def test_rouge_l_and_chrf() -> None:
    assert metrics.rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert metrics.rouge_l("the cat is on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    assert metrics.rouge_l("", "abc") == 0.0
    assert metrics.chrf("report_checks prints slack", "report_checks prints slack") == pytest.approx(100.0)
    assert 0 < metrics.chrf("report_checks prints", "report_checks prints slack") < 100


def test_perplexity_is_exp_of_mean_token_loss() -> None:
    loss, ppl = metrics.perplexity(6.0, 3)
    assert loss == pytest.approx(2.0) and ppl == pytest.approx(math.exp(2.0))
    assert metrics.perplexity(0.0, 0) == (None, None)


def test_routing_metrics_counts_unparsed_answers_in_their_own_column() -> None:
    phases = ["triage", "rtl_design", "synthesis"]
    m = metrics.routing_metrics(["rtl_design", "synthesis", "synthesis", "triage"],
                                ["rtl_design", "synthesis", "unparsed", "rtl_design"], phases)
    assert m["accuracy"] == pytest.approx(0.5) and m["unparsed"] == 1 and m["n"] == 4
    assert m["confusion"]["columns_labels"] == [*phases, "unparsed"]
    assert m["confusion"]["matrix"] == [[0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]]
    assert sum(map(sum, m["confusion"]["matrix"])) == 4  # every item in the matrix
