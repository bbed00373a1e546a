"""``m2s2l`` command line: train | eval | demo | score | export | calibrate.

    m2s2l train --data DIR --config m2s2l_paper --out RUN [--epochs 60 --batch-size 16 --lr 2e-4 ...]
    torchrun --nproc_per_node=N -m m2s2l train ...       (or: m2s2l train --gpus N ...)  DDP, global batch = B*N
    m2s2l eval --data DIR --ckpt RUN/model.pt --out EVAL [--smooth SIGMA] [--labels FILE] [--score VARIANT]
    m2s2l demo [--out DIR] [--quick]
    m2s2l calibrate --ckpt IN --data DIR --out OUT [--clips A,B] [--set score_w_motion=1]   (alert threshold)

Extra subcommands: a module ``m2s2l.engine.<name>`` defining ``add_parser(subparsers)`` (which registers its
parser and sets ``func`` with ``set_defaults``) is picked up for ``score`` (stream), ``export`` and ``calibrate``.
"""
import argparse
import importlib
import os
import sys


def _device_args(p):
    p.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:1")
    p.add_argument("--amp", dest="amp", action="store_true", default=True, help="bf16 autocast on CUDA (default)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="full float32")
    p.add_argument("--backend", default="auto", help="kernel backend for model.set_backend: auto|triton|cuda|torch")
    p.add_argument("--workers", type=int, default=8, help="threads decoding frames (once, into the cache)")
    p.add_argument("--cache-dir", default=None, help="keep decoded uint8 frames (and flow) as .npy here")


def add_train_args(p):
    p.add_argument("--data", required=True, help="dataset root (with training/) or a folder of clips")
    p.add_argument("--config", default="m2s2l_lite", help="registered model name (m2s2l_lite | m2s2l_paper)")
    p.add_argument("--out", required=True, help="run folder: last.pt, best.pt, model.pt, metrics.jsonl")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override, repeatable: --set clip_len=4 --set image_size=128")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16, help="per rank; global batch = batch_size * world size")
    p.add_argument("--lr", type=float, default=2e-4, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warmup (capped at 20%% of epochs)")
    p.add_argument("--min-lr-ratio", type=float, default=0.01, help="cosine floor as a fraction of --lr")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm (0 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms (warn only)")
    p.add_argument("--val-clips", type=int, default=0, help="hold out K normal training clips for validation, "
                   "best.pt selection and calibration")
    p.add_argument("--select", choices=("last", "best"), default="last", help="weights written to model.pt")
    p.add_argument("--save-half", action="store_true", help="store weights as float16 (smaller checkpoints)")
    p.add_argument("--shard-mib", type=float, default=0, help="split checkpoints larger than this many MiB into "
                   "shards next to a small index file (e.g. 15 for a box that returns files <= 16 MiB)")
    p.add_argument("--save-every", type=int, default=0, help="also keep epoch_NNN.pt every K epochs (0 = off)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from OUT/last.pt (or the given checkpoint); the model config comes from it")
    p.add_argument("--max-minutes", type=float, default=0, help="stop cleanly after this wall time, saving last.pt")
    p.add_argument("--fit-minutes", type=float, default=0,
                   help="after each epoch, lower --epochs so the whole schedule (cosine fully decayed, calibration "
                        "included) ends within this wall time; --epochs stays the upper bound")
    p.add_argument("--stop-after-epochs", type=int, default=0, help="stop (resumable) after this many epochs")
    p.add_argument("--stop-after-steps", type=int, default=0, help="stop (resumable) after this many steps")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--log-every", type=int, default=20, help="steps between metrics.jsonl records")
    p.add_argument("--data-device", default="auto", help="where the uint8 frame cache lives: auto|cpu|cuda")
    p.add_argument("--flow-method", default="dis", choices=("dis", "farneback"), help="for motion_target=flow")
    p.add_argument("--calib-quantile", type=float, default=0.995, help="alert threshold quantile of normal scores")
    p.add_argument("--calib-max", type=int, default=4000, help="max training samples scored for calibration")
    p.add_argument("--find-unused", action="store_true", help="DDP find_unused_parameters=True")
    p.add_argument("--no-sync-bn", dest="sync_bn", action="store_false",
                   help="under DDP on CUDA, keep per-rank BatchNorm statistics (default: SyncBatchNorm, so N ranks "
                        "x batch B take the same step as 1 GPU x batch N*B)")
    p.add_argument("--gpus", type=int, default=0, help="launch N DDP workers via torch.distributed.run")
    _device_args(p)


def add_eval_args(p):
    from m2s2l.models.scoring import SCORE_VARIANTS
    p.add_argument("--data", required=True, help="dataset root (with testing/) or a folder of clips")
    p.add_argument("--ckpt", required=True, help="checkpoint (model.pt, last.pt, best.pt)")
    p.add_argument("--out", required=True, help="output folder: scores.csv, metrics.json, score_curves.png")
    p.add_argument("--labels", default=None, help="ground truth (.mat/.npy/.csv/folder); default: auto-detect")
    p.add_argument("--smooth", type=float, default=0.0, help="Gaussian temporal smoothing sigma in frames (0 = off)")
    p.add_argument("--split", default=None, help="split folder to score (default: testing if present)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--score", default="default", choices=list(SCORE_VARIANTS),
                   help="score formula (m2s2l/models/scoring.py SCORE_VARIANTS; chosen on validation clips with "
                        "pseudo-anomalies by bench/select_score.py); default: the model's own score")
    _device_args(p)


def build_parser():
    parser = argparse.ArgumentParser(prog="m2s2l", description="M2S2L video anomaly detection")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model on normal videos")
    add_train_args(p)
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("eval", help="frame-level AUC on a labelled test split")
    add_eval_args(p)
    p.set_defaults(func=_cmd_eval)
    p = sub.add_parser("demo", help="synthetic data -> train -> eval, CPU, a few minutes")
    p.add_argument("--out", default="m2s2l_demo", help="output folder")
    p.add_argument("--quick", action="store_true", help="smaller data and fewer epochs (CI)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_demo)
    for name, module in (("score", "m2s2l.engine.stream"), ("export", "m2s2l.engine.export"),
                         ("calibrate", "m2s2l.engine.calibrate")):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(mod, "add_parser"):
            mod.add_parser(sub)
    return parser


def train_args(argv):
    """Parse ``m2s2l train`` arguments (a list) into the namespace the engine takes (used by the demo)."""
    p = argparse.ArgumentParser(prog="m2s2l train")
    add_train_args(p)
    return p.parse_args(argv)


def eval_args(argv):
    p = argparse.ArgumentParser(prog="m2s2l eval")
    add_eval_args(p)
    return p.parse_args(argv)


def torchrun_command(argv, gpus):
    """The ``torch.distributed.run`` command line that ``m2s2l train --gpus N ...`` re-executes itself as."""
    rest, skip = [], False
    for a in argv[argv.index("train") + 1:]:
        if skip:
            skip = False
        elif a == "--gpus":
            skip = True
        elif not a.startswith("--gpus="):
            rest.append(a)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
            "-m", "m2s2l", "train"] + rest


def _cmd_train(args, argv):
    if args.gpus and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        cmd = torchrun_command(argv, args.gpus)
        print("launching:", " ".join(cmd), flush=True)
        os.execv(sys.executable, cmd)
    from m2s2l.engine.train import train
    res = train(args)
    return 0 if res is not None else 1


def _cmd_eval(args, argv):
    from m2s2l.engine.evaluate import run_eval
    run_eval(args)
    return 0


def _cmd_demo(args, argv):
    from m2s2l.engine.demo import run_demo
    run_demo(args.out, quick=args.quick, seed=args.seed, epochs=args.epochs, device=args.device)
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, argv) if args.func in (_cmd_train, _cmd_eval, _cmd_demo) else args.func(args)
    except (FileNotFoundError, ValueError, ImportError) as e:
        if os.environ.get("M2S2L_DEBUG"):
            raise
        print(f"m2s2l {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
