"""Latency that can be trusted: spread, threads and conditions recorded, and a warning when a ratio means nothing."""

from __future__ import annotations

import json
import os

import torch

from prunecli.metrics.latency import Latency, WIDE_SPREAD, measure_latencies, unreliable
from prunecli.models import ModelSpec, build_model


def _lat(median, q1, q3, *, threads=1, load=0.1, device="cpu"):
    return Latency(median, "contiguous", 8, 10, min_ms=q1, q1_ms=q1, q3_ms=q3, max_ms=q3, threads=threads, device=device, load=load)


def test_unreliable_names_a_wide_spread_and_a_loaded_machine():
    steady = _lat(10.0, 9.8, 10.3)
    assert unreliable([steady, _lat(5.0, 4.9, 5.1)]) is None
    wide = _lat(10.0, 8.0, 8.0 + 10.0 * (WIDE_SPREAD + 0.1), threads=4)
    msg = unreliable([steady, wide])
    assert msg and "not meaningful" in msg and "--threads 1" in msg
    loaded = _lat(10.0, 9.9, 10.1, load=(os.cpu_count() or 1) + 3.0)
    assert "loaded" in unreliable([steady, loaded])
    assert unreliable([_lat(10.0, 9.9, 10.1, load=99.0, device="cuda:0")]) is None  # a GPU timing is not the CPU's load


def test_threads_are_pinned_for_the_measurement_and_restored():
    before = torch.get_num_threads()
    model = build_model(ModelSpec("conv2", 3, 10, 8))
    lats = measure_latencies([model, model], (3, 8, 8), batch_size=4, repeats=3, threads=1)
    assert torch.get_num_threads() == before
    for lat in lats:
        assert lat.threads == 1 and lat.runs == 3 and lat.min_ms <= lat.q1_ms <= lat.median_ms <= lat.q3_ms <= lat.max_ms
        assert lat.conditions().startswith("batch 4, 1 thread, ") and lat.to_json()["threads"] == 1


def test_compress_and_evaluate_report_how_latency_was_measured(cli, tmp_path, tiny_base):
    conv2_pruned = tmp_path / "masked.pt"
    assert cli("prune", tiny_base, "--method", "l1", "--rate", "0.5", "-o", conv2_pruned).code == 0
    r = cli("compress", conv2_pruned, "--threads", "1", "--repeats", "3", "--json", "-o", tmp_path / "small.pt")
    assert r.code == 0, r.stderr
    lat = json.loads(r.stdout)["latency"]
    assert lat["before"]["threads"] == lat["after"]["threads"] == 1 and "1 thread" in lat["conditions"]
    e = cli("evaluate", conv2_pruned, tmp_path / "small.pt", "--threads", "1", "--repeats", "3", "--json")
    assert e.code == 0, e.stderr
    data = json.loads(e.stdout)
    rows = data if isinstance(data, list) else data["reports"]
    assert all(row["latency"]["threads"] == 1 for row in rows)
    assert "interleaved" in e.stderr
