"""Choose the anomaly-score formula WITHOUT the test set: normal validation clips + synthetic anomalies.

    python bench/select_score.py --ckpt checkpoints/ped2_m2s2l_paper.pt --data /work/shared/datasets/ped2 \\
        [--clips 05,13] [--seed 0] [--json OUT.json]

1. Loads the held-out validation clips (default: the checkpoint's ``calibration.clips``) of the TRAINING split
   (a split or path named test/testing is refused): normal videos the model was not trained on.
2. Injects pseudo-anomalies (``m2s2l.engine.pseudo.inject_pseudo_anomalies``: moving pasted intruders and
   frame skips), deterministic per (seed, clip name); no event starts before frame ``clip_len``.
3. Scores every frame with a full history (the first ``clip_len`` frames are excluded, as in evaluation) with
   every formula of ``m2s2l.models.scoring.SCORE_VARIANTS`` from one forward pass per sample.
4. Applies the evaluation protocol (``m2s2l.engine.evaluate.protocol_metrics``: per-video min-max, micro and
   macro AUC) per variant, and also micro AUC per event kind (frames of the other kind left out).
5. Selects the variant with the best micro AUC; ties (equal to 3 decimals, i.e. 0.1 %) go to fewer terms, then
   to the earlier variant in ``SCORE_VARIANTS``. Prints a table, writes JSON.
"""
import argparse
import json
import os
import sys
import time
import zlib

import numpy as np
import torch


def check_split(data, split):
    """Refuse anything that would touch test data: a split named test*, or a path with a test/testing folder."""
    if split and split.lower().startswith("test"):
        raise ValueError(f"select_score uses validation clips of the training split only; refusing split {split!r}")
    parts = os.path.normpath(os.path.abspath(os.path.join(data, split or ""))).lower().split(os.sep)
    if {"test", "testing"} & set(parts):
        raise ValueError(f"select_score uses validation clips of the training split only; refusing path "
                         f"{os.path.join(data, split or '')!r}")


def load_clips(data, split, names, size, channels, workers=2):
    """``{name: (n, C, H, W) uint8}`` for the clips ``names`` of ``data``/``split`` (decoded at ``size``)."""
    from m2s2l.data.frames import find_clips, read_clip
    check_split(data, split)
    clips = {c.name: c for c in find_clips(data, split)}
    missing = [n for n in names if n not in clips]
    if missing:
        raise ValueError(f"clips {missing} not found in {os.path.join(data, split)} (have {sorted(clips)})")
    return {n: read_clip(clips[n], size, channels, workers=workers) for n in names}


def inject(frames_by_clip, seed, clip_len, difficulty="standard"):
    """Pseudo-anomalies per clip: ``(store, kind_labels {name: (n,) str}, events {name: [...]})``;
    ``difficulty`` names a preset of ``m2s2l.engine.pseudo.PRESETS``."""
    from m2s2l.data.store import FrameStore
    from m2s2l.engine.pseudo import PRESETS, inject_pseudo_anomalies
    if difficulty not in PRESETS:
        raise ValueError(f"difficulty must be one of {sorted(PRESETS)}, got {difficulty!r}")
    arrays, labels, kinds, events = [], {}, {}, {}
    for name, a in frames_by_clip.items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        hwc = a.transpose(0, 2, 3, 1)
        hwc = hwc[..., 0] if hwc.shape[-1] == 1 else hwc
        out, lab, ev = inject_pseudo_anomalies(np.ascontiguousarray(hwc), rng, start_min=clip_len,
                                               return_events=True, **PRESETS[difficulty])
        arrays.append(out[:, None] if out.ndim == 3 else out.transpose(0, 3, 1, 2))
        labels[name], events[name] = lab, ev
        k = np.full(len(lab), "", object)
        for e in ev:
            k[e["start"]:e["start"] + e["length"]] = e["kind"]
        kinds[name] = k
    store = FrameStore(torch.from_numpy(np.ascontiguousarray(np.concatenate(arrays))), list(frames_by_clip),
                       [len(a) for a in arrays])
    store.attach_labels(labels)
    return store, kinds, events


@torch.no_grad()
def score_all(model, store, clip_len, batch_size=8, progress=True, device="cpu"):
    """``{variant: {clip: (n,) float64 raw, NaN for the first clip_len frames}}`` from one forward per sample."""
    from m2s2l.engine.evaluate import score_variants, split_by_clip
    idx = store.target_indices(clip_len)
    parts, t0, t_print = {}, time.time(), time.time()
    for i in range(0, len(idx), batch_size):
        for k, v in score_variants(model, store.batch(idx[i:i + batch_size], clip_len, device)).items():
            parts.setdefault(k, []).append(v.double().cpu().numpy())
        if progress and time.time() - t_print > 30:
            done = min(i + batch_size, len(idx))
            print(f"scoring: {done}/{len(idx)} samples, {(time.time() - t0) / done:.2f} s/sample", flush=True)
            t_print = time.time()
    return {k: split_by_clip(store, np.concatenate(chunks), clip_len) for k, chunks in parts.items()}


def kind_auc(norm, labels, kinds, kind, clip_len):
    """Micro AUC of normalised scores over normal frames + frames of event ``kind`` (other events left out)."""
    from m2s2l.engine.evaluate import frame_auc
    ys, ss = [], []
    for name, s in norm.items():
        y, k = labels[name][clip_len:], kinds[name][clip_len:]
        keep = (y == 0) | (k == kind)
        ys.append(y[keep])
        ss.append(s[keep])
    return frame_auc(np.concatenate(ys), np.concatenate(ss))


def select(results):
    """Best micro AUC; ties (equal to 3 decimals) -> fewer terms, then earlier in SCORE_VARIANTS."""
    from m2s2l.models.scoring import SCORE_VARIANTS, variant_terms
    order = list(SCORE_VARIANTS)
    return min(results, key=lambda n: (-round(results[n]["micro_auc"], 3), variant_terms(n), order.index(n)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data", required=True, help="dataset root holding the training split")
    p.add_argument("--split", default="training", help="never a test split (refused)")
    p.add_argument("--clips", default=None, help="comma-separated validation clips (default: the checkpoint's "
                   "calibration clips)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--difficulty", default="standard", help="pseudo-anomaly preset of m2s2l.engine.pseudo.PRESETS: "
                   "standard | hard (smaller, slower intruders; 2x frame skips)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu (torch backend) | cuda (Triton kernels, float32: seconds "
                   "instead of ~10 minutes)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    check_split(args.data, args.split)  # before anything is loaded
    torch.set_num_threads(args.threads)
    from m2s2l.engine.checkpoint import load_checkpoint
    from m2s2l.engine.evaluate import protocol_metrics
    from m2s2l.models.scoring import SCORE_VARIANTS
    device = torch.device(args.device)
    model, ckpt = load_checkpoint(args.ckpt, device)
    model.eval()
    model.set_backend("torch" if device.type == "cpu" else "triton")
    cfg = model.config
    T = cfg.clip_len
    names = args.clips.split(",") if args.clips else list((ckpt.get("calibration") or {}).get("clips") or [])
    if not names:
        raise ValueError("no validation clips: pass --clips (the checkpoint has no calibration clips)")
    t0 = time.time()
    store, kinds, events = inject(load_clips(args.data, args.split, names, cfg.image_size, cfg.in_channels),
                                  args.seed, T, args.difficulty)
    if getattr(cfg, "motion_target", "diff") == "flow":  # flow of the frames as injected (same method as training)
        store.compute_flow((ckpt.get("train_args") or {}).get("flow_method", "dis"))
    n_scored = sum(max(0, n - T) for n in store.lengths)
    print(f"validation clips {names} of {args.split}: {len(store)} frames, {n_scored} scored; "
          f"{sum(len(e) for e in events.values())} pseudo-anomaly events, "
          f"{int(sum(store.labels[n][T:].sum() for n in names))} anomalous scored frames", flush=True)
    raw = score_all(model, store, T, args.batch_size, device=device)
    t_score = time.time() - t0
    results = {}
    for v in SCORE_VARIANTS:
        m, norm = protocol_metrics(raw[v], store.labels, T)
        results[v] = {"micro_auc": m["micro_auc"], "macro_auc": m["macro_auc"],
                      "patch_auc": kind_auc(norm, store.labels, kinds, "patch", T),
                      "skip_auc": kind_auc(norm, store.labels, kinds, "skip", T),
                      "per_clip": {c: e["auc"] for c, e in m["per_clip"].items()}}
    chosen = select(results)

    def f(x):
        return "  -  " if x is None else f"{100 * x:5.1f}"
    print(f"\n{'variant':26s} {'micro':>6s} {'macro':>6s} {'patch':>6s} {'skip':>6s}  (AUC %, pseudo-anomalies)")
    for v, r in results.items():
        mark = "  <- selected" if v == chosen else ""
        print(f"{v:26s} {f(r['micro_auc']):>6s} {f(r['macro_auc']):>6s} {f(r['patch_auc']):>6s} "
              f"{f(r['skip_auc']):>6s}{mark}")
    print(f"\nselected: {chosen}  (best micro AUC; ties to 0.1% -> fewer terms)  [{t_score:.0f} s]")
    if args.json:
        out = {"selected": chosen, "rule": "best micro AUC; ties (3 decimals) -> fewer terms, then list order",
               "checkpoint": os.path.abspath(args.ckpt), "model": ckpt.get("model"), "data": os.path.abspath(args.data),
               "split": args.split, "clips": names, "seed": args.seed, "difficulty": args.difficulty, "clip_len": T,
               "n_frames_scored": n_scored,
               "events": events, "variants": results, "seconds": round(t_score, 1)}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return chosen


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        print(f"select_score: error: {e}", file=sys.stderr)
        sys.exit(2)
