"""``hdus-edge bench serve`` end to end at a tiny size: every figure present, no failed request."""

from __future__ import annotations

import json

from hdus_edge.bench.serve import ServeBenchConfig, print_report, run_serve_bench


def test_serve_bench_smoke():
    cfg = ServeBenchConfig(latency_calls=20, predict_calls=1, throughput_s=0.2, ready_runs=1, churn=2)
    result = run_serve_bench(cfg)
    json.dumps(result)  # JSON-able
    assert set(result["latency"]) == {"in_process", "http_json", "http_binary", "predict_command"}
    assert [(t["batch"], t["clients"]) for t in result["throughput"]] == [(1, 1), (1, 4), (32, 1), (32, 4)]
    assert all(t["failed"] == 0 and t["requests_per_s"] > 0 for t in result["throughput"])
    churn = result["churn"]
    assert churn["seed_swaps"] == churn["unlearns"] == 2 and churn["failed_requests"] == 0 and churn["requests"] > 0
    assert churn["member_sets_seen"] >= 2
    assert result["setup"]["answer_parameters"]["members"] == ",".join(f"dev-{k}" for k in range(1, 9))
    assert result["agent"]["rss_mb"] > 0 and result["agent"]["ready_s_median"] > 0
    lines: list[str] = []
    print_report(result, lines.append)
    assert any(line.startswith("goals met:") for line in lines)
