"""``m2s2l demo``: synthetic surveillance data -> train m2s2l_lite -> evaluate, on a CPU, no downloads.

Writes under OUT: ``data/`` (the generated dataset, see m2s2l.data.synthetic), ``run/`` (model.pt, last.pt,
metrics.jsonl), ``eval/`` (scores.csv, metrics.json, score_curves.png). The last line printed is
``demo: micro AUC 0.xxx, macro AUC 0.xxx``. ``quick`` uses smaller frames, fewer clips and epochs (CI).
"""
import json
import os

DEMO_SIZES = {
    # image size, train clips, test clips, frames per clip, epochs, model overrides
    "full": dict(size=48, n_train=5, n_test=6, n_frames=80, epochs=6, batch=16, lr=3e-3),
    "quick": dict(size=32, n_train=4, n_test=3, n_frames=60, epochs=5, batch=16, lr=3e-3),
}


def _model_overrides(size, quick):
    """m2s2l_lite at demo scale: gray frames of ``size`` px, T=4, three pyramid levels, d_state 8, expand 1
    (the CPU path of the selective scan is a plain PyTorch loop, so the state size sets the CPU cost)."""
    return [f"image_size={size}", "in_channels=1", "clip_len=4", "widths=(16, 24, 32)", "enc_depths=(0, 1, 1)",
            "dec_depths=(1, 1, 1)", "d_state=8", "expand=1"]


def run_demo(out="m2s2l_demo", quick=False, seed=0, epochs=None, device="cpu", verbose=True):
    """Generate, train, evaluate; returns the metrics dict (micro_auc, macro_auc, ...)."""
    from m2s2l.cli import eval_args, train_args
    from m2s2l.data.synthetic import make_dataset

    from .evaluate import run_eval
    from .train import train
    p = DEMO_SIZES["quick" if quick else "full"]
    data = os.path.join(out, "data")
    spec = dict(p, seed=seed)
    marker = os.path.join(data, "demo_spec.json")
    if not (os.path.isfile(marker) and json.load(open(marker)) == spec):
        if verbose:
            print(f"demo: generating synthetic data in {data} ...", flush=True)
        make_dataset(data, size=p["size"], n_train=p["n_train"], n_test=p["n_test"], n_frames=p["n_frames"],
                     seed=seed)
        with open(marker, "w") as f:
            json.dump(spec, f)
    run = os.path.join(out, "run")
    argv = ["--data", data, "--config", "m2s2l_lite", "--out", run, "--epochs", str(epochs or p["epochs"]),
            "--batch-size", str(p["batch"]), "--lr", str(p["lr"]), "--seed", str(seed), "--device", device,
            "--no-amp", "--warmup-epochs", "0.5", "--log-every", "5", "--backend", "torch"]
    for s in _model_overrides(p["size"], quick):
        argv += ["--set", s]
    train(train_args(argv))
    metrics = run_eval(eval_args(["--data", data, "--ckpt", os.path.join(run, "model.pt"),
                                  "--out", os.path.join(out, "eval"), "--device", device, "--no-amp"]))
    print(f"demo: micro AUC {metrics['micro_auc']:.3f}, macro AUC {metrics['macro_auc']:.3f}", flush=True)
    return metrics
