"""What `make run-services` prints for each fix run the worker finished: the gate's verdict, never a bare
FAILED state (a failed gate is an outcome with next steps, as in `make run`)."""

from __future__ import annotations

from infra.local.run_demo import gate_verdict


def _outcomes(locality: float) -> dict:
    expectations = [
        {"name": "min_rewrite_acc", "passed": True, "observed": 0.975, "threshold": 0.9},
        {
            "name": "min_locality_unchanged",
            "passed": locality >= 0.95,
            "observed": locality,
            "threshold": 0.95,
        },
    ]
    return {"passed": all(item["passed"] for item in expectations), "expectations": expectations}


def test_a_failed_gate_names_each_shortfall_and_what_to_do():
    verdict = gate_verdict(_outcomes(0.9479166666666667))
    assert verdict.startswith("gate FAILED on 1 expectation(s): min_locality_unchanged 0.948 (needs 0.950)")
    assert "min_rewrite_acc" not in verdict
    assert "nothing was registered" in verdict and "MEND_RETRY_FAILED_GATE=true" in verdict


def test_a_passed_gate_and_a_run_that_never_reached_it():
    assert gate_verdict(_outcomes(0.96)).startswith("gate PASSED")
    assert "no verdict recorded" in gate_verdict(None)
