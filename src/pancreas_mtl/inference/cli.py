"""``pancreas-mtl``: the package's console command for a trained model's archive (``results/model/*.zip``).

    pancreas-mtl install MODEL.zip [-o RESULTS_DIR]
    pancreas-mtl predict -m MODEL.zip|MODEL_FOLDER -i INPUT_DIR -o OUTPUT_DIR [--device cpu|cuda|auto] [--folds ...]

The work is :mod:`pancreas_mtl.inference.portable`'s; this module only reads the command line and prints errors a
user can act on without a traceback.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from pancreas_mtl.errors import UserInputError

#: an option's default when the model card's setting applies (a string default would go through the option's type)
FROM_MODEL_CARD = object()


def _prior_threshold(text: str) -> float | None:
    if text.lower() == "off":
        return None
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"a relative threshold in (0, 1] or 'off', not {text!r}") from err
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a relative threshold in (0, 1] or 'off', not {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="pancreas-mtl",
        description="Install a trained pancreas multi-task model's archive, or predict new CT images with it.",
    )
    commands = main.add_subparsers(dest="command", required=True)
    install = commands.add_parser(
        "install",
        help="check an archive and install it into nnU-Net's results folder",
        description="Check the archive (checksums, member names, checkpoints loaded without running code) and "
        "install it into nnU-Net's results folder, where stock nnUNetv2_predict finds it too.",
    )
    install.add_argument("archive", type=Path, help="the model archive (.zip)")
    install.add_argument(
        "-o",
        "--results",
        type=Path,
        default=os.environ.get("nnUNet_results"),
        help="nnU-Net's results folder to install into (default: $nnUNet_results)",
    )
    predict = commands.add_parser(
        "predict",
        help="predict a folder of CT images",
        description="Predict every 3D image of a folder (.nii.gz, .nii, .mha, .mhd, .nrrd; any names): one mask "
        "per image under its name, on its grid, and predictions.csv with the subtype and its probabilities.",
    )
    predict.add_argument("-m", "--model", type=Path, required=True, help="a model archive (.zip) or installed folder")
    predict.add_argument("-i", "--input", type=Path, required=True, help="the folder of images")
    predict.add_argument("-o", "--output", type=Path, required=True, help="a new or empty folder for the results")
    predict.add_argument("--device", choices=["cpu", "cuda", "auto"], help="default: the model card's")
    predict.add_argument("--folds", nargs="+", help="a subset of the model's folds (default: all of them)")
    predict.add_argument("--tile-step-size", type=float, help="sliding-window step (default: the model card's)")
    predict.add_argument(
        "--lesion-prior",
        type=_prior_threshold,
        default=FROM_MODEL_CARD,
        metavar="THRESHOLD|off",
        help="the lesion-presence prior's relative threshold, or off (default: the model card's)",
    )
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "install":
            return _install(args)
        from pancreas_mtl.inference.portable import predict_new_images

        predict_new_images(
            args.model,
            args.input,
            args.output,
            device=args.device,
            folds=args.folds,
            prior_threshold="archived" if args.lesion_prior is FROM_MODEL_CARD else args.lesion_prior,
            tile_step_size=args.tile_step_size,
            echo=lambda line: print(line, flush=True),
        )
        return 0
    except UserInputError as err:
        print(f"pancreas-mtl {args.command}: error: {err}", file=sys.stderr)
        return 2


def _install(args: argparse.Namespace) -> int:
    from pancreas_mtl.inference.model_archive import install_model_archive, version_warnings
    from pancreas_mtl.inference.portable import stock_predict_command

    if args.results is None:
        raise UserInputError("no results folder: give -o RESULTS_DIR or set nnUNet_results")
    folder, card = install_model_archive(args.archive, args.results)
    for warning in version_warnings(card, args.archive):
        print(f"warning: {warning}", file=sys.stderr)
    environment, command = stock_predict_command(folder, card)
    print(f"installed {card['model']} ({card['stage']}, folds {card['folds']}) into {folder}")
    print(f"predict with: pancreas-mtl predict -m {shlex.quote(str(folder))} -i INPUT_DIR -o OUTPUT_DIR")
    print("or with stock nnU-Net (inputs named *_0000.nii.gz; it runs the checkpoints' pickles: trusted models only):")
    print(" ".join(f"{k}={shlex.quote(v)}" for k, v in environment.items()) + " " + shlex.join(command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
