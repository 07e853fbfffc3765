"""Import benchmark: a generated CSV of N rows (default 100,000) through the real HTTP
endpoint of an API process served by uvicorn. Prints rows per second and the API
process's peak resident memory, next to its memory at rest.

    python -m bench.import_csv [--rows 100000]
"""

import argparse
import io
import time

import httpx

from bench.common import bench_env, fresh_database, peak_rss_mb, prepare_tenant, report, service


def generate_csv(rows: int) -> bytes:
    out = io.StringIO()
    out.write("email,status,tags,verified,hard_bounced\n")
    for i in range(rows):
        status = "subscribed" if i % 5 else "pending"
        bounced = "true" if i % 97 == 0 else ""
        out.write(f"user{i}@example.com,{status},t{i % 7};all,{'true' if i % 3 else ''},{bounced}\n")
    return out.getvalue().encode()


def run(rows: int) -> dict[str, float]:
    payload = generate_csv(rows)
    with fresh_database() as url:
        env = bench_env(url)
        key = prepare_tenant(env)
        with service("api", env) as (base, proc):
            at_rest = peak_rss_mb(proc.pid)
            start = time.perf_counter()
            response = httpx.post(
                f"{base}/api/contacts/imports/csv",
                data={"audience": "news", "client": "app"},
                files={"file": ("contacts.csv", payload, "text/csv")},
                headers={"Authorization": f"Bearer {key}"},
                timeout=600,
            )
            elapsed = time.perf_counter() - start
            response.raise_for_status()
            peak = peak_rss_mb(proc.pid)
    counts = response.json()["counts"]
    assert counts["created"] == rows, counts
    figures = {"rows": rows, "seconds": elapsed, "rows_per_second": rows / elapsed, "api_rss_at_rest_mb": at_rest,
               "api_peak_rss_mb": peak, "csv_mb": len(payload) / 2**20}  # fmt: skip
    report(
        "import_csv",
        [
            ("rows", f"{rows:,}"),
            ("CSV size", f"{figures['csv_mb']:.1f} MB"),
            ("time", f"{elapsed:.1f} s"),
            ("rows per second", f"{figures['rows_per_second']:,.0f}"),
            ("API RSS at rest", f"{at_rest:.0f} MB"),
            ("API peak RSS", f"{peak:.0f} MB"),
        ],
        figures,
    )
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    run(parser.parse_args().rows)
