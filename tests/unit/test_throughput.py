"""The throughput bench's arithmetic and its reading of /proc (the timings themselves are never asserted)."""

from __future__ import annotations

import argparse
import os

from streams.throughput import Result, build_report, proc_cpu, proc_peak_rss_mb


def test_rates_and_ratios_come_from_the_same_run():
    results = [
        Result("raw", 10_000, 0.1, 0.1, 70.0),
        Result("naive", 10_000, 5.0, 5.0, 75.0),
        Result("omniprofile-single", 10_000, 2.0, 4.0, 200.0),
        Result("omniprofile-batched", 10_000, 0.5, 1.0, 210.0),
    ]
    report = build_report(results, {}, argparse.Namespace(partitions=4), 10_000)
    rows = {r["name"]: r for r in report["results"]}
    assert rows["raw"]["events_per_second"] == 100_000
    assert rows["omniprofile-single"]["cpu_seconds_per_million"] == 400.0
    assert report["ratios"]["single_vs_naive"] == 5_000 / 2_000
    assert report["ratios"]["batched_vs_raw"] == 20_000 / 100_000
    assert "two_workers_vs_one" not in report["ratios"]


def test_proc_figures_of_this_process_are_plausible():
    burn = sum(i * i for i in range(300_000))
    assert burn > 0
    assert proc_cpu(os.getpid()) > 0
    assert 10 < proc_peak_rss_mb(os.getpid()) < 100_000


def test_the_zlib_variant_of_a_stored_hash_changes_only_its_json():
    import zlib

    from streams.throughput import zlib_json

    plain = {b"version": b"3", b"orders": b"1", b"json": b'{"customer_id":"c-1","version":3}'}
    packed = zlib_json(plain)
    assert packed.keys() == plain.keys()
    assert {k: v for k, v in packed.items() if k != b"json"} == {b"version": b"3", b"orders": b"1"}
    assert zlib.decompress(packed[b"json"]) == plain[b"json"]
    assert zlib_json(packed) == packed  # a hash the worker already stored compressed stays as it is
