"""bench/serving.py against the real server: its counts agree with what the server did."""
import json

from apiutil import API_KEY

from bench import serving


def test_serving_bench_random_completions(server, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = serving.main(["--base-url", server.url, "--api-key", API_KEY, "--num-prompts", "6", "--input-len", "20",
                       "--output-len", "5", "--ignore-eos", "--max-concurrency", "2", "--goodput", "ttft:60000",
                       "tpot:60000", "--json", str(out), "--no-progress"])
    assert rc == 0
    s = json.loads(out.read_text())["summary"]
    assert s["successful_requests"] == 6 and s["failed_requests"] == 0
    assert s["total_output_tokens"] == 30 and s["total_input_tokens"] == 6 * 21      # 20 + BOS
    assert s["request_goodput"] == s["request_throughput"] and s["peak_concurrent_requests"] <= 2
    assert 0 < s["median_ttft_ms"] <= s["p99_ttft_ms"] and s["mean_tpot_ms"] > 0
    assert "Serving Benchmark Result" in capsys.readouterr().out


def test_serving_bench_passkey_chat_with_poisson_arrivals(server, tmp_path):
    out = tmp_path / "bench.json"
    rc = serving.main(["--base-url", server.url, "--api-key", API_KEY, "--endpoint", "chat", "--dataset", "passkey",
                       "--num-prompts", "3", "--input-len", "120", "--request-rate", "20", "--burstiness", "0.5",
                       "--json", str(out), "--no-progress"])
    assert rc == 0
    s = json.loads(out.read_text())["summary"]
    assert s["successful_requests"] == 3 and 0.0 <= s["passkey_accuracy"] <= 1.0
    assert s["total_input_tokens"] > 3 * 60
