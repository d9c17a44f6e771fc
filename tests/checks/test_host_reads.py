"""Checks read results back to the host a fixed number of times, not once per parameter: on a GPU
each read waits for every queued kernel (a CUDA sync). Counted exactly, on the CPU
(tests/support/host_reads.py; benchmarks/bench_host_reads.py prints the count per check)."""

from __future__ import annotations

import pytest

import models as M
import tbkit
from host_reads import CountReads


def reads_of(check: str, layers: int, tmp_path) -> int:
    lm = M.loaded(M.build(M.HealthyDecoder, layers=layers))
    tbkit.run(lm, checks="summary", out_dir=tmp_path / "warm", progress=False)  # imports, lazy setup
    with CountReads() as counter:
        report = tbkit.run(lm, checks=check, out_dir=tmp_path / f"{check}-{layers}", progress=False)
    assert {r.status.value for r in report.rows if r.check == check} <= {"PASS", "WARN", "SKIP"}
    return counter.counts["all"]


@pytest.mark.parametrize("check", ["init", "gradient_flow", "causal"])
def test_host_reads_do_not_grow_with_the_number_of_parameters(check, tmp_path):
    few, many = reads_of(check, 2, tmp_path), reads_of(check, 8, tmp_path)  # 30 and 102 parameter tensors
    assert few == many, (few, many)
