"""Options shared by several commands, each defined once."""

from __future__ import annotations

import click

from onnxslim.data.sources import parse_input_shapes
from onnxslim.errors import OnnxSlimError


def _shapes(ctx, param, value):
    try:
        return parse_input_shapes(list(value))
    except OnnxSlimError as exc:
        raise click.BadParameter(str(exc)) from None


def _providers(ctx, param, value):
    return tuple(p.strip() for p in value.split(",") if p.strip())


def output_option(f):
    return click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the result model (written atomically, never over the input).")(f)


def report_option(f):
    return click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None, help="Write the whole result as JSON to this file.")(f)


def input_shapes_option(f):
    return click.option(
        "--input-shapes",
        multiple=True,
        callback=_shapes,
        metavar="NAME:D1,D2,...",
        help="Static shape for an input with dynamic dimensions (repeat for several inputs).",
    )(f)


def providers_option(default: str = "cpu"):
    def decorate(f):
        return click.option(
            "--providers",
            default=default,
            show_default=True,
            callback=_providers,
            help="Comma-separated execution providers: cpu, cuda, tensorrt, ...",
        )(f)

    return decorate


def threads_option(f):
    return click.option("--threads", type=click.IntRange(min=0), default=1, show_default=True, help="onnxruntime intra-op threads for timing (0: onnxruntime's default).")(f)


def quiet_option(f):
    return click.option("-q", "--quiet", is_flag=True, help="No progress bars.")(f)
