"""Print medians and ratios per group from a pytest-benchmark JSON file.

    python benchmarks/report.py RESULTS.json

Within a group, each line shows the median, the throughput where the test's ``extra_info`` or
name gives a count, and the ratio of the baseline's median to this one (``x faster``).
Baselines are the tests whose name contains ``baseline``.
"""

import json
import sys
from collections import defaultdict


def main(path):
    data = json.load(open(path))
    groups = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b["group"]].append(b)
    print(f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
          f"{data['machine_info'].get('python_version')}")
    for group, items in groups.items():
        print(f"\n## {group}")
        bases = [b for b in items if "baseline" in b["name"]]
        for b in sorted(items, key=lambda b: b["stats"]["median"]):
            med = b["stats"]["median"]
            line = f"  {b['name']:<60} median {med * 1e3:9.3f} ms"
            extra = b.get("extra_info") or {}
            if "records" in extra:
                line += f"  {extra['records'] / med / 1e6:7.2f} M rec/s"
            if "bytes" in extra:
                line += f"  {extra['bytes'] / med / 1e6:8.1f} MB/s"
            for k in ("p50_us", "p99_us", "max_us"):
                if k in extra:
                    line += f"  {k[:-3]} {extra[k]:.0f} us"
            for base in bases:
                if base is not b:
                    line += f"  {base['stats']['median'] / med:6.2f}x vs {base['name'].split('baseline_')[-1]}"
            print(line)


if __name__ == "__main__":
    main(sys.argv[1])
