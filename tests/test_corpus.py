"""Every graph of onnx's own backend test corpus goes through onnxslim unharmed.

1,884 single-operator cases (plus a variant with constant weights for each
Conv/ConvTranspose/Gemm/MatMul case), the pytorch-converted and simple model
tests, and the 'light' model graphs (the three over 200 MB through cleanup only). The counts are printed with the test
output; a single failure fails the test, listing what broke.
"""

import warnings

import pytest

from tests.corpus.runner import Tally, check_case, file_cases, node_cases

pytestmark = pytest.mark.slow


def test_backend_corpus_is_transformed_or_declined_never_broken(capsys):
    tally = Tally()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case in list(node_cases()) + list(file_cases()):
            check_case(*case, tally)
    counts = tally.counts()
    with capsys.disabled():
        print(f"\nonnx backend corpus: {len({o.case for o in tally.outcomes})} cases")
        for step, counter in counts.items():
            print(f"  {step:9s} transformed {counter['transformed']:5d}   declined {counter['declined']:5d}   failed {counter['failed']:3d}")
    failures = tally.failures()
    assert not failures, "\n".join(f"{f.case} [{f.step}]: {f.detail.strip().splitlines()[-1]}" for f in failures[:20])
    assert counts["cleanup"]["transformed"] > 300
    assert counts["quantize"]["transformed"] > 40
    assert counts["prune"]["transformed"] >= 5
    declined = [o for o in tally.outcomes if o.result == "declined"]
    assert all(o.detail for o in declined), "every decline states a reason"
