"""Options shared by several commands, each defined once."""

from __future__ import annotations

import dataclasses

import click

from onnxslim.data.sources import parse_input_shapes
from onnxslim.errors import OnnxSlimError
from onnxslim.options import option_name, range_text, setting_of


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
    return click.option(
        "--threads", type=click.IntRange(min=0), default=0, show_default=True,
        help="onnxruntime intra-op threads you deploy with: timings and what is written follow it (0: onnxruntime's default, one per core); 1 thread is timed and reported too.",
    )(f)


def quiet_option(f):
    return click.option("-q", "--quiet", is_flag=True, help="No progress bars.")(f)


def _csv(ctx, param, value):
    if value is None:
        return ()
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _floats(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of numbers") from None


def _size(ctx, param, value):
    if value is None:
        return None
    try:
        height, width = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"'{value}' is not HEIGHTxWIDTH, e.g. 224x224") from None
    if height < 1 or width < 1:
        raise click.BadParameter(f"'{value}': height and width must be at least 1")
    return height, width


def data_options(f):
    """--data and everything that says how to read it: shared by quantize and prune."""
    options = [
        click.option("--data", default=None, help="Calibration data: a folder of .npz batches (keys = input names), of .npy batches (a model with one input), of images, or 'random'."),
        click.option("--data-loader", default=None, metavar="MODULE:FUNCTION", help="A Python function yielding dicts of input name -> array."),
        click.option("--image-size", callback=_size, default=None, metavar="HxW", help="Image folder: resize to this size."),
        click.option("--image-layout", type=click.Choice(["auto", "nchw", "nhwc"]), default="auto", show_default=True,
                     help="Image folder: tensor layout (auto: channels last where the model's input has 3 on its last axis and not on axis 1, else first)."),
        click.option("--image-scale", type=float, default=1.0 / 255.0, show_default="1/255", help="Image folder: multiply pixel values by this."),
        click.option("--image-mean", callback=_floats, default=None, metavar="R,G,B", help="Image folder: subtract per channel (after scaling)."),
        click.option("--image-std", callback=_floats, default=None, metavar="R,G,B", help="Image folder: divide per channel."),
        click.option("--image-channels", type=click.Choice(["rgb", "bgr"]), default="rgb", show_default=True, help="Image folder: channel order."),
        input_shapes_option,
    ]
    for option in reversed(options):
        f = option(f)
    return f


def csv_option(name: str, help_text: str, dest: str | None = None):
    declarations = (name, dest) if dest else (name,)
    return click.option(*declarations, default=None, callback=_csv, metavar="A,B,...", help=help_text)


class NoneOr(click.ParamType):
    """A number in range, or 'none' for None: how the user turns off a setting that is on by default."""

    def __init__(self, inner: click.ParamType):
        self.inner = inner
        self.name = f"{inner.name}|none"

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
            return None
        return self.inner.convert(value, param, ctx)


class WordOrNumber(click.ParamType):
    """One of a few words, or a number in range: a setting with a named default mode and a tunable one."""

    def __init__(self, words: tuple[str, ...], number: click.ParamType, number_text: str):
        self.words = words
        self.number = number
        self.number_text = number_text
        self.name = "|".join(words) + f"|{number.name}"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.strip().lower() in self.words:
            return value.strip().lower()
        try:
            return self.number.convert(value, param, ctx)
        except click.BadParameter:
            self.fail(f"'{value}' is neither {', '.join(self.words)} nor a number in {self.number_text}", param, ctx)


def config_option(config_type: type, name: str):
    """A click option built from the declaration of ``config_type.name``: its name, default, choices, range and help."""
    field = next(f for f in dataclasses.fields(config_type) if f.name == name)
    described = setting_of(config_type, name)
    flag = option_name(name, described)
    if field.type in ("bool", bool):
        return click.option(flag, name, is_flag=True, default=field.default, show_default="/" in flag, help=described.help)
    if field.type in ("tuple[str, ...]",):
        return csv_option(flag, described.help, dest=name)
    if field.type in ("tuple[float, ...]",):
        default = ",".join(f"{v:g}" for v in field.default)
        return click.option(flag, name, default=default, show_default=True, callback=_floats, metavar=described.metavar, help=described.help)
    ranged = described.low is not None or described.high is not None
    if described.choices is not None and not ranged:
        kind = click.Choice(list(described.choices))
    elif ranged:
        numeric = click.IntRange if "int" in str(field.type) else click.FloatRange
        kind = numeric(described.low, described.high, min_open=described.low_open, max_open=described.high_open)
        if described.choices is not None:
            kind = WordOrNumber(described.choices, kind, range_text(described))
        if "None" in str(field.type) and field.default is not None:  # a default the user can switch off
            kind = NoneOr(kind)
    else:
        kind = None
    return click.option(
        flag, name, type=kind, default=field.default, show_default=field.default is not None, metavar=described.metavar, help=described.help
    )


def config_options(config_type: type, *names: str):
    """:func:`config_option` for each of ``names``, in that order on the help page."""

    def decorate(f):
        for name in reversed(names):
            f = config_option(config_type, name)(f)
        return f

    return decorate


def config_values(config_type: type, options: dict) -> dict:
    """Take the values of ``config_type``'s declared settings out of ``options`` (click's keyword arguments)."""
    names = {f.name for f in dataclasses.fields(config_type) if "setting" in f.metadata}
    return {name: options.pop(name) for name in list(options) if name in names}
