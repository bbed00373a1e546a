"""The hottest SASS instructions of one kernel launch by warp-stall samples, from an Nsight Compute report.

    ncu --section SourceCounters --section WarpStateStats -k regex:NAME -c 1 -o rep python3 ...
    python bench/ncu_hot.py rep.ncu-rep [--top 40]

Runs ``ncu --import REP --page source --csv --print-source sass`` and prints the instructions with the most
stall samples (all / not issued), with their share of the kernel's samples and 2 instructions of context before
each, then the samples summed by opcode. Needs ncu on PATH (or /usr/local/cuda/bin/ncu)."""
import argparse
import csv
import io
import shutil
import subprocess
import sys
from collections import Counter


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("report")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    ncu = shutil.which("ncu") or "/usr/local/cuda/bin/ncu"
    out = subprocess.run([ncu, "--import", args.report, "--page", "source", "--csv", "--print-source", "sass"],
                         capture_output=True, text=True).stdout
    lines = out.splitlines()  # a "Kernel Name" line comes before the header
    start = next((i for i, line in enumerate(lines) if line.startswith('"Address"')), 0)
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))
    if not rows:
        sys.exit("no source rows in the report (was SourceCounters collected?)")
    keys = [k for k in rows[0].keys() if k]
    try:
        k_all = next(k for k in keys if "Sampling" in k and "All" in k)
        k_src = next(k for k in keys if k.strip('"') in ("Source", "# Source") or k.endswith("Source"))
    except StopIteration:
        sys.exit(f"unexpected columns: {keys}\n{out[:2000]}")
    val = [float((r.get(k_all) or "0").replace(",", "") or 0) for r in rows]
    tot = sum(val) or 1.0
    order = sorted(range(len(rows)), key=lambda i: -val[i])[:args.top]
    print(f"{len(rows)} SASS instructions, {tot:.0f} stall samples; top {args.top}:")
    for i in sorted(order):
        ctx = " | ".join(rows[j][k_src].strip() for j in range(max(0, i - 2), i))
        print(f"{val[i] / tot:6.2%}  [{i:5d}] {rows[i][k_src].strip():60s}   <- {ctx[:120]}")
    by_op = Counter()
    for r, v in zip(rows, val):
        op = r[k_src].strip().split()
        op = [o for o in op if not o.startswith("@")]
        by_op[op[0].split(".")[0] if op else "?"] += v
    print("by opcode:", ", ".join(f"{k} {v / tot:.1%}" for k, v in by_op.most_common(12)))


if __name__ == "__main__":
    main()
