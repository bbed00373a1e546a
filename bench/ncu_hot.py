"""The hottest SASS instructions of one kernel launch by warp-stall samples, from an Nsight Compute report.

    ncu --section SourceCounters --section WarpStateStats -k regex:NAME --launch-skip S -c 1 -o rep python3 ...
    python bench/ncu_hot.py rep.ncu-rep [--top 40]

Runs ``ncu --import REP --page source --csv --print-source sass`` and prints the instructions with the most
stall samples (share of the kernel's samples, with the two instructions before each), then the samples summed by
opcode. Needs ncu on PATH (or /usr/local/cuda/bin/ncu); ``hot`` does the parsing (tested without ncu)."""
import argparse
import csv
import io
import shutil
import subprocess
import sys
from collections import Counter


def hot(text, top=40):
    """From the CSV of ncu's source page (a "Kernel Name" line may come before the header): (n instructions, total
    samples, [(share, index, instruction, the two before it)] for the ``top`` instructions in program order,
    [(opcode, share)] most sampled first). A CSV without the sampling or source columns is a ValueError naming
    the columns it has."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"Address"')), 0)
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))
    keys = [k for k in (rows[0].keys() if rows else []) if k]
    k_all = next((k for k in keys if "Sampling" in k and "All" in k), None)
    k_src = next((k for k in keys if k == "Source"), None)
    if k_all is None or k_src is None:
        raise ValueError(f"no stall-sampling / Source columns in the report's source page (columns: {keys})")
    val = [float((r.get(k_all) or "0").replace(",", "") or 0) for r in rows]
    tot = sum(val) or 1.0
    src = [r[k_src].strip() for r in rows]
    order = sorted(sorted(range(len(rows)), key=lambda i: -val[i])[:top])
    top_rows = [(val[i] / tot, i, src[i], " | ".join(src[max(0, i - 2):i])) for i in order]
    by_op = Counter()
    for s, v in zip(src, val):
        words = [w for w in s.split() if not w.startswith("@")]
        by_op[words[0].split(".")[0] if words else "?"] += v
    return len(rows), sum(val), top_rows, [(k, v / tot) for k, v in by_op.most_common()]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("report")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args(argv)
    ncu = shutil.which("ncu") or "/usr/local/cuda/bin/ncu"
    out = subprocess.run([ncu, "--import", args.report, "--page", "source", "--csv", "--print-source", "sass"],
                         capture_output=True, text=True)
    try:
        n, tot, top_rows, by_op = hot(out.stdout, args.top)
    except ValueError as e:
        sys.exit(f"{e}\n{out.stdout[:2000]}{out.stderr[:2000]}")
    print(f"{n} SASS instructions, {tot:.0f} stall samples; top {args.top}:")
    for share, i, s, ctx in top_rows:
        print(f"{share:6.2%}  [{i:5d}] {s:60s}   <- {ctx[:120]}")
    print("by opcode:", ", ".join(f"{k} {v:.1%}" for k, v in by_op[:12]))


if __name__ == "__main__":
    main()
